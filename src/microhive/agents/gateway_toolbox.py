"""The tools of the mesh, as a worker sees them: the gateway, over one pooled MCP session.

A worker opens one MCP client session to the gateway when it starts and keeps it
for every sub-task (never a session per call). It identifies itself with its
role's bearer token, so the gateway lists and allows only that role's tools.
Each call carries the call context in ``params._meta`` with one hop fewer. The
MCP SDK itself opens the client span of each request (``MCP send tools/call
{tool}``, a child of the loop's ``execute_tool`` span) and writes its
``traceparent`` into ``_meta``, so the server's ``tools/call`` span is its child;
a second client span of ours would only repeat it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from microhive.agents.loop import ToolOutcome
from microhive.context import CallContext
from microhive.errors import ServiceUnavailable, UpstreamError
from microhive.models.types import ToolSpec

__all__ = ["GatewayToolbox"]


class GatewayToolbox:
    """``await start()`` once, then ``list_tools`` / ``call_tool``; ``aclose()`` at the end."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 120.0) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._stack = contextlib.AsyncExitStack()
        self._client: Client | None = None
        self._http: httpx2.AsyncClient | None = None

    async def start(self) -> None:
        http = await self._stack.enter_async_context(
            httpx2.AsyncClient(headers=self._headers, timeout=self._timeout)
        )
        self._http = http
        try:
            self._client = await self._stack.enter_async_context(
                Client(streamable_http_client(self.url, http_client=http))
            )
        except Exception as exc:
            await self._stack.aclose()
            raise ServiceUnavailable(f"cannot reach the gateway at {self.url}: {exc}") from exc

    async def aclose(self) -> None:
        self._client = None
        self._http = None
        await self._stack.aclose()

    def _session(self) -> Client:
        if self._client is None:
            raise ServiceUnavailable("the gateway toolbox is not started")
        return self._client

    async def list_tools(self) -> list[ToolSpec]:
        """The role's tools now (asked once per sub-task: the gateway's list changes)."""
        listed = await self._session().list_tools()
        return [
            ToolSpec(t.name, t.description or "", dict(t.input_schema or {})) for t in listed.tools
        ]

    async def select(self, task: str, tools: Sequence[ToolSpec], k: int) -> list[ToolSpec]:
        """The ``k`` of ``tools`` that fit ``task`` best, by the gateway's tool retrieval."""
        if self._http is None:
            raise ServiceUnavailable("the gateway toolbox is not started")
        base = self.url.rsplit("/mcp", 1)[0]
        try:
            response = await self._http.post(
                f"{base}/tools/search", json={"task": task, "k": k, "mode": "fused"}
            )
            response.raise_for_status()
            ranked = [str(t["tool"]["name"]) for t in response.json()["tools"]]
        except (httpx2.HTTPError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"gateway tool search failed: {exc}") from exc
        by_name = {t.name: t for t in tools}
        return [by_name[name] for name in ranked if name in by_name][:k]

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, context: CallContext
    ) -> ToolOutcome:
        meta = context.next_hop().to_meta()
        try:
            result = await self._session().call_tool(name, arguments, meta=meta)  # type: ignore[arg-type]
        except Exception as exc:  # the SDK raises its own errors; convert at the boundary
            raise UpstreamError(f"gateway call {name!r} failed: {exc}") from exc
        texts = [getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text"]
        data = result.structured_content
        text = "\n".join(t for t in texts if t)
        if not text and data is not None:
            text = json.dumps(data)
        return ToolOutcome(text, bool(result.is_error), data)
