"""One pooled, long-lived MCP client session per upstream tool service.

The gateway never opens an MCP session per call: each upstream gets one SDK
:class:`mcp.Client` over streamable HTTP, kept open and shared by every caller
(the SDK multiplexes concurrent requests over its HTTP connection pool).

The client lives in an *owner task* because the SDK's transport is an anyio
task group that must be entered and left by the same task. If the transport
breaks (the service was killed), the owner notices, in-flight calls get a
``Connection closed`` error, and the next call connects again. Connection
errors are turned into JSON-RPC error responses by :class:`_FailSoftTransport`
so an unreachable upstream fails the one request instead of the whole session.

The owner also keeps a ``subscriptions/listen`` stream (2026-07-28) or reads the
``notifications/tools/list_changed`` notification (earlier revisions), and calls
``on_tools_changed`` so the gateway refreshes that namespace's tool list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter

from microhive.errors import InvalidInput, ServiceUnavailable, UpstreamError
from microhive.tracing import background

from ..pooled_http import PooledHTTPTransport
from ..registry import UpstreamSpec

__all__ = ["UpstreamPool"]

log = logging.getLogger(__name__)

#: JSON-RPC "server error" range code used for an unreachable upstream.
UNREACHABLE = -32001
#: Idle connections are dropped before the server does (uvicorn: 5 s), so a request is
#: never written to a connection the server is closing at that moment.
KEEPALIVE = 3.0
_CALLER_MISTAKES = frozenset({types.INVALID_PARAMS, types.INVALID_REQUEST, types.METHOD_NOT_FOUND})
#: The forwarding path keeps a result in its wire form: the SDK has already checked it
#: against the negotiated protocol revision, and the gateway's own server checks it
#: again for the caller's revision, so no typed model is built in between.
_WIRE_RESULT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


class _FailSoftTransport(httpx2.AsyncBaseTransport):
    """Answers a failed connection with a JSON-RPC error instead of raising.

    The SDK resolves a non-2xx JSON-RPC error body into an error for that one
    request; a raised ``ConnectError`` would instead tear down the session.
    """

    def __init__(self) -> None:
        # the lean keep-alive transport: the gateway's hop is mostly HTTP client work
        self._inner = PooledHTTPTransport(
            max_connections=256, max_keepalive=64, keepalive_expiry=KEEPALIVE
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": UNREACHABLE, "message": f"upstream unreachable: {exc!r}"},
            }
            return httpx2.Response(503, json=body, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class UpstreamPool:
    """The pooled session to one upstream, with its tool list and in-flight count."""

    def __init__(
        self,
        spec: UpstreamSpec,
        *,
        token: str | None = None,
        connect_timeout: float = 10.0,
        on_tools_changed: Callable[[UpstreamPool], None] | None = None,
        listen: bool = True,
    ) -> None:
        self.spec = spec
        self.tools: list[types.Tool] = []
        self.in_flight = 0
        self.calls = 0
        self.healthy: bool | None = None
        self.last_error: str | None = None
        self._token = token
        self._connect_timeout = connect_timeout
        self._on_tools_changed = on_tools_changed
        self._listen_enabled = listen
        self._client: Client | None = None
        self._want = anyio.Event()
        self._ready = anyio.Event()
        self._drop = anyio.Event()
        self._closing = False
        self._closed = anyio.Event()
        self._scope = anyio.CancelScope()
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    async def start(self, tg: TaskGroup) -> None:
        """Start the owner task (connecting happens on first use)."""
        await tg.start(self._own)

    # -- owner task ------------------------------------------------------------------
    async def _own(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        try:
            # Connecting and following tool-list changes serve no one request: their
            # traces (the SDK's handshake and listen spans) are background ones.
            with self._scope, background():
                await self._serve()
        finally:
            self._closed.set()

    async def _serve(self) -> None:
        while not self._closing:
            await self._want.wait()
            if self._closing:
                break
            self._want = anyio.Event()
            try:
                await self._session()
            except Exception as exc:  # boundary: any SDK/transport failure ends this session
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.healthy = False
                log.info("upstream %s session ended: %s", self.namespace, self.last_error)
            finally:
                self._client = None
                self._ready.set()  # wake waiters; they see no client and fail
                self._ready = anyio.Event()
                self._drop = anyio.Event()

    async def _session(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        async with AsyncExitStack() as stack:
            http = httpx2.AsyncClient(
                transport=_FailSoftTransport(),
                headers=headers,
                timeout=httpx2.Timeout(30.0, connect=self._connect_timeout, read=300.0),
            )
            await stack.enter_async_context(http)
            client = Client(
                streamable_http_client(self.spec.url, http_client=http),
                cache=None,
                message_handler=self._on_message,
            )
            # No cancel scope around the enter: the SDK opens task groups in it that
            # must outlive this block. The connect timeout is httpx's.
            await stack.enter_async_context(client)
            self._client = client
            self.healthy = True
            self.last_error = None
            ready, self._ready = self._ready, anyio.Event()
            ready.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen, client)
                await self._drop.wait()
                tg.cancel_scope.cancel()

    async def _listen(self, client: Client) -> None:
        """Follow tool-list changes on a 2026-07-28 connection (no-op on older ones)."""
        caps = client.server_capabilities.tools
        if not self._listen_enabled or caps is None or not caps.list_changed:
            return
        try:
            async with client.listen(tools_list_changed=True) as sub:
                async for _event in sub:
                    self._changed()
        except Exception as exc:  # listen is best effort; the TTL refresh still runs
            log.debug("upstream %s: listen ended: %r", self.namespace, exc)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._changed()
        await anyio.lowlevel.checkpoint()

    def _changed(self) -> None:
        if self._on_tools_changed is not None:
            self._on_tools_changed(self)

    # -- use -------------------------------------------------------------------------
    async def _get(self) -> Client:
        if self._closing:
            raise ServiceUnavailable(f"upstream {self.namespace!r} is closed")
        if self._client is not None:
            return self._client
        ready = self._ready
        self._want.set()
        await ready.wait()
        if self._client is None:
            raise ServiceUnavailable(
                f"upstream {self.namespace!r} at {self.spec.url} is unreachable: {self.last_error}"
            )
        return self._client

    def _convert(self, exc: Exception) -> Exception:
        if isinstance(exc, MCPError):
            if exc.error.code in (UNREACHABLE, types.CONNECTION_CLOSED):
                self.healthy = False
                self.last_error = exc.error.message
                if exc.error.code == types.CONNECTION_CLOSED:
                    self._drop.set()
                return ServiceUnavailable(f"upstream {self.namespace!r}: {exc.error.message}")
            if exc.error.code in _CALLER_MISTAKES:
                # the request was wrong, not the upstream: no retry, no breaker count
                return InvalidInput(
                    f"upstream {self.namespace!r} refused the call: {exc.error.message}"
                )
            return UpstreamError(f"upstream {self.namespace!r} answered an error: {exc}")
        return UpstreamError(f"upstream {self.namespace!r} failed: {type(exc).__name__}: {exc}")

    async def call(
        self, tool: str, arguments: dict[str, Any] | None, meta: dict[str, Any] | None
    ) -> types.CallToolResult:
        """Call one tool on the pooled session; RuntimeFailure on transport trouble."""
        self.in_flight += 1
        self.calls += 1
        self._idle = anyio.Event() if self.in_flight == 1 else self._idle
        try:
            client = await self._get()
            try:
                return await client.session.call_tool(tool, arguments, meta=meta)  # type: ignore[arg-type]
            except Exception as exc:
                raise self._convert(exc) from exc
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def forward(
        self, tool: str, arguments: dict[str, Any] | None, meta: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Forward one ``tools/call`` and return the result in its wire form (the gateway's hop).

        Unlike :meth:`call` this skips what only an end caller needs: building a
        ``CallToolResult`` model and re-validating structured content against the
        tool's output schema (the tool server produced it against that schema, and
        the agent that receives it checks it again). The SDK still frames the
        request and validates the result against the protocol revision.
        """
        self.in_flight += 1
        self.calls += 1
        self._idle = anyio.Event() if self.in_flight == 1 else self._idle
        try:
            client = await self._get()
            request = types.CallToolRequest(
                params=types.CallToolRequestParams(name=tool, arguments=arguments, _meta=meta)
            )
            try:
                # the result-type bound is BaseModel, but any TypeAdapter works at run time
                result = await client.session.send_request(request, _WIRE_RESULT)  # type: ignore[type-var]
            except Exception as exc:
                raise self._convert(exc) from exc
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        kind = result.get("resultType", "complete")
        if kind != "complete":
            # e.g. 2026-07-28 "input_required": the gateway does not relay those rounds
            raise UpstreamError(
                f"upstream {self.namespace!r} answered {tool!r} with a {kind!r} result, "
                "which the gateway does not forward"
            )
        return result

    async def list_tools(self) -> list[types.Tool]:
        """Fetch every page of the upstream's tool list and remember it."""
        client = await self._get()
        tools: list[types.Tool] = []
        cursor: str | None = None
        try:
            for _ in range(100):
                page = await client.session.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor)
                )
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
        except Exception as exc:
            raise self._convert(exc) from exc
        self.tools = tools
        self.healthy = True
        return tools

    async def ping(self) -> bool:
        """Health check: one ``tools/list`` round trip (``ping`` is gone in 2026-07-28)."""
        try:
            client = await self._get()
            await client.session.list_tools()
        except Exception as exc:
            self.healthy = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.healthy = True
        return True

    async def drain(self, within: float) -> bool:
        """Wait until no call is in flight (True) or ``within`` seconds pass (False)."""
        with anyio.move_on_after(within):
            await self._idle.wait()
            return True
        return False

    async def aclose(self, grace: float = 2.0) -> None:
        """Close the session; an owner stuck connecting is cancelled after ``grace``."""
        self._closing = True
        self._want.set()
        self._drop.set()
        with anyio.move_on_after(grace):
            await self._closed.wait()
        self._scope.cancel()
        await self._closed.wait()
