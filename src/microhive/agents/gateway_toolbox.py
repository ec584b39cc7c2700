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
from typing import Any, Self

import anyio
import httpx2

from microhive.agents.loop import ToolOutcome
from microhive.context import CallContext
from microhive.errors import MicrohiveError, ServiceUnavailable, UpstreamError
from microhive.mcp.gateway.upstream import UpstreamPool
from microhive.mcp.registry import UpstreamSpec
from microhive.models.types import ToolSpec

__all__ = ["GatewayToolbox"]


class GatewayToolbox:
    """``await start()`` once, then ``list_tools`` / ``call_tool``; ``aclose()`` at the end
    (or ``async with GatewayToolbox(url, token=...) as tools:``).

    The session is the gateway's own :class:`UpstreamPool` pointed at the
    gateway: one long-lived SDK client owned by a task, reconnecting after the
    gateway restarts, with connection errors failing one call rather than the
    session (mcp 2.3 ends a whole client session on one connection error).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 120.0) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._stack = contextlib.AsyncExitStack()
        self._pool = UpstreamPool(
            UpstreamSpec(namespace="gateway", url=url, source="settings"),
            token=token,
            listen=False,
        )
        self._http: httpx2.AsyncClient | None = None

    async def start(self) -> None:
        tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.push_async_callback(self._pool.aclose)
        await self._pool.start(tg)
        self._http = await self._stack.enter_async_context(
            httpx2.AsyncClient(headers=self._headers, timeout=self._timeout)
        )

    async def aclose(self) -> None:
        self._http = None
        await self._stack.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def list_tools(self) -> list[ToolSpec]:
        """The role's tools now (asked once per sub-task: the gateway's list changes)."""
        try:
            listed = await self._pool.list_tools()
        except MicrohiveError:
            raise
        except Exception as exc:  # the SDK's own errors, converted at the boundary
            raise UpstreamError(f"cannot list the gateway's tools: {exc}") from exc
        return [ToolSpec(t.name, t.description or "", dict(t.input_schema or {})) for t in listed]

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
            result = await self._pool.call(name, arguments, meta)
        except MicrohiveError:
            raise
        except Exception as exc:  # the SDK raises its own errors; convert at the boundary
            raise UpstreamError(f"gateway call {name!r} failed: {exc}") from exc
        texts = [getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text"]
        data = result.structured_content
        text = "\n".join(t for t in texts if t)
        if not text and data is not None:
            text = json.dumps(data)
        return ToolOutcome(text, bool(result.is_error), data)
