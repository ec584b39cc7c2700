"""The gateway over HTTP: one MCP endpoint (``/mcp``) and a REST admin API (``/admin``).

The MCP endpoint is the SDK's low-level :class:`~mcp.server.lowlevel.server.Server`
behind its streamable-HTTP session manager (both the stateless 2026-07-28
revision and the earlier session-based ones), with our handlers for
``tools/list`` and ``tools/call`` and ``subscriptions/listen`` so callers learn
when the catalogue changes. A bearer token is required as soon as any token is
configured (see ``roles.py``); the SDK's transport security checks ``Host`` and
``Origin`` (DNS rebinding) and the request size.

Admin API (JSON; needs the mesh service token when one is configured)::

    GET    /admin/upstreams                     every namespace, its URL, version, health
    POST   /admin/upstreams                     {"namespace", "url", "version"}: register
    DELETE /admin/upstreams/{namespace}         unregister
    POST   /admin/upstreams/{namespace}/attach  {"url", "version"}: hot swap
    POST   /admin/upstreams/{namespace}/refresh list the upstream's tools again
    GET    /admin/tools                         the catalogue (held tools included)
    GET    /admin/held                          tools held after a change (rug-pull guard)
    POST   /admin/tools/{qualified}/approve     accept a held tool's new definition

Tool retrieval (role token, like ``/mcp``)::

    POST   /tools/search                        {"task", "k", "mode"}: the top-k tools
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from microhive.errors import InvalidInput, MicrohiveError, NotFound

from ..registry import UpstreamSpec
from .core import Gateway
from .roles import Caller

__all__ = ["GatewayHTTP"]

_STATUS = {
    "invalid_input": 400,
    "invalid_context": 400,
    "config_error": 400,
    "not_found": 404,
    "conflict": 409,
    "service_unavailable": 503,
    "timeout": 504,
}


class GatewayHTTP:
    """Builds the ASGI app; ``async with`` runs the MCP session manager."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        allowed_origins: list[str] | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
        bind_host: str = "127.0.0.1",
    ) -> None:
        self.gateway = gateway
        self._bus = InMemorySubscriptionBus()
        self.server: Server[Any] = Server(
            "microhive-gateway",
            version="1",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self._bus),
            get_tool_input_schema=gateway.input_schema,
        )
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
        origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
        if bind_host not in ("127.0.0.1", "localhost", "::1"):
            hosts.append(f"{bind_host}:*")
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=hosts,
            allowed_origins=origins + list(allowed_origins or []),
        )
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            security_settings=security,
            max_request_body_size=max_body_bytes,
            # Plain JSON answers: the gateway streams nothing mid-call, and a JSON
            # response is answered in the request's own task (no SSE machinery).
            json_response=True,
        )
        self._tg: anyio.abc.TaskGroup | None = None
        gateway.on_change(self._announce)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[GatewayHTTP]:
        async with self.manager.run(), anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    def _announce(self) -> None:
        if self._tg is not None:
            self._tg.start_soon(self._bus.publish, ToolsListChanged())

    # -- MCP handlers --------------------------------------------------------------------
    def _caller(self, ctx: Any) -> Caller:
        request = getattr(ctx, "request", None)
        header = request.headers.get("authorization") if request is not None else None
        caller = self.gateway.auth.resolve(header)
        if caller is None:  # the HTTP guard answers 401 first; this is belt and braces
            raise MCPError(code=types.INVALID_REQUEST, message="unknown or missing bearer token")
        return caller

    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = self._caller(ctx)
        tools = [entry.tool for entry in self.gateway.visible(caller)]
        return types.ListToolsResult(tools=tools, ttl_ms=0, cache_scope="private")

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = self._caller(ctx)
        meta = dict(params.meta) if params.meta else None
        result = await self.gateway.call(caller, params.name, params.arguments, meta)
        # A forwarded result stays in wire form: the SDK's runner serialises a dict
        # result as it is (checked against the caller's protocol revision), so no
        # model is rebuilt only to be dumped again.
        return cast(types.CallToolResult, result)

    # -- ASGI ----------------------------------------------------------------------------
    def app(self) -> Starlette:
        """The routes; mount it in a service, and run :meth:`run` in its lifespan."""
        mcp_app = _BearerGuard(StreamableHTTPASGIApp(self.manager), self.gateway)
        admin = self._admin
        routes = [
            Route("/mcp", endpoint=mcp_app),
            Route("/tools/search", self._search, methods=["POST"]),
            Route("/admin/upstreams", admin(self._get_upstreams), methods=["GET"]),
            Route("/admin/upstreams", admin(self._post_upstream), methods=["POST"]),
            Route("/admin/upstreams/{namespace}", admin(self._delete_upstream), methods=["DELETE"]),
            Route("/admin/upstreams/{namespace}/attach", admin(self._attach), methods=["POST"]),
            Route("/admin/upstreams/{namespace}/refresh", admin(self._refresh), methods=["POST"]),
            Route("/admin/tools", admin(self._get_tools), methods=["GET"]),
            Route("/admin/held", admin(self._get_held), methods=["GET"]),
            Route("/admin/tools/{qualified}/approve", admin(self._approve), methods=["POST"]),
        ]
        return Starlette(routes=routes)

    def _admin(
        self, handler: Callable[[Request], Awaitable[Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not self.gateway.auth.is_admin(request.headers.get("authorization")):
                return JSONResponse(
                    {"error": "unauthorized", "message": "the admin API needs the mesh token"},
                    status_code=401,
                )
            try:
                return JSONResponse(await handler(request))
            except MicrohiveError as exc:
                return JSONResponse(exc.to_dict(), status_code=_STATUS.get(exc.code, 502))

        return endpoint

    async def _search(self, request: Request) -> Response:
        """Top-k tools for a task, among those the caller's role may see."""
        caller = self.gateway.auth.resolve(request.headers.get("authorization"))
        if caller is None:
            return JSONResponse(
                {"error": "unauthorized", "message": "unknown or missing bearer token"},
                status_code=401,
            )
        try:
            body = await self._body(request)
            k = body.get("k", 8)
            mode = body.get("mode", "fused")
            if not isinstance(k, int) or not 1 <= k <= 200:
                raise InvalidInput("'k' must be an integer between 1 and 200")
            if mode not in ("keyword", "embedding", "fused"):
                raise InvalidInput("'mode' must be keyword, embedding or fused")
            hits = await self.gateway.search(caller, body.get("task", ""), k, mode)
        except MicrohiveError as exc:
            return JSONResponse(exc.to_dict(), status_code=_STATUS.get(exc.code, 502))
        tools = [
            {
                "tool": entry.tool.model_dump(by_alias=True, mode="json", exclude_none=True),
                "qualified": entry.qualified,
                "score": score,
            }
            for entry, score in hits
        ]
        return JSONResponse({"tools": tools})

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise InvalidInput(f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        return body

    async def _get_upstreams(self, request: Request) -> Any:
        return {"upstreams": self.gateway.upstreams()}

    async def _post_upstream(self, request: Request) -> Any:
        spec = UpstreamSpec.from_dict(await self._body(request))
        return {"upstream": await self.gateway.register(spec)}

    async def _delete_upstream(self, request: Request) -> Any:
        return {"upstream": await self.gateway.unregister(request.path_params["namespace"])}

    async def _attach(self, request: Request) -> Any:
        body = await self._body(request)
        url, version = body.get("url"), body.get("version", "")
        if not isinstance(url, str) or not isinstance(version, str):
            raise InvalidInput("attach needs {'url': str, 'version': str (optional)}")
        namespace = request.path_params["namespace"]
        return {"upstream": await self.gateway.attach(namespace, url, version)}

    async def _refresh(self, request: Request) -> Any:
        entries = await self.gateway.refresh(request.path_params["namespace"])
        return {"tools": [e.qualified for e in entries]}

    async def _get_tools(self, request: Request) -> Any:
        return {"tools": self.gateway.catalogue()}

    async def _get_held(self, request: Request) -> Any:
        return {"held": self.gateway.registry.held()}

    async def _approve(self, request: Request) -> Any:
        qualified = request.path_params["qualified"]
        if "." not in qualified:
            raise NotFound(f"expected a qualified tool name 'namespace.tool', got {qualified!r}")
        self.gateway.approve(qualified)
        return {"approved": qualified}


class _BearerGuard:
    """401 for an unknown bearer token before the MCP transport sees the request."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self._app = app
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = None
            for key, value in scope.get("headers", []):
                if key == b"authorization":
                    header = value.decode("latin-1")
            if self._gateway.auth.resolve(header) is None:
                response = JSONResponse(
                    {"error": "unauthorized", "message": "unknown or missing bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
