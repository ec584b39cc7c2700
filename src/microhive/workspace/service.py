"""The ``workspace`` service kind: REST + MCP + background workers in one process.

Mesh file::

    stores:
      workspace: file://.microhive/workspace
    services:
      workspace:
        kind: workspace
        port: 8300
        settings:
          embedder: minilm            # or hashing (tests)
          max_file_bytes: 26214400
          webhook_schedule: [5, 300, 1800, 7200, 18000, 36000, 36000]

The store URL comes from ``settings.store``, else ``stores.workspace``; the bus
from ``settings.bus``, else the mesh's ``bus.url``.

Tracing: REST requests get the runtime's HTTP server span; MCP ``tools/call``
requests get the tool service's ``tools/call {tool}`` server span parented from
``params._meta`` (``/mcp`` is a protocol path, so no orphan HTTP span per call),
and ``/metrics`` has their latencies. Events and webhook attempts continue the
writer's trace (see :mod:`.events`, :mod:`.webhooks`).
"""

from __future__ import annotations

from typing import Any

from microhive.service import Service, ServiceContext
from microhive.tracing import register_call_metrics
from microhive.workspace.core import Workspace, WorkspaceSettings
from microhive.workspace.rest import grants_from_settings, rest_routes

__all__ = ["create_service", "settings_for"]


def settings_for(ctx: ServiceContext) -> WorkspaceSettings:
    """The workspace settings of a service entry, with mesh-wide defaults filled in."""
    values: dict[str, Any] = dict(ctx.spec.settings)
    stores = getattr(ctx.mesh, "stores", None)
    if "store" not in values and stores is not None and getattr(stores, "workspace", None):
        values["store"] = stores.workspace
    values.setdefault("store", f"file://{(ctx.state_dir / 'workspace').resolve()}")
    bus = getattr(ctx.mesh, "bus", None)
    if "bus" not in values and bus is not None and getattr(bus, "url", None):
        values["bus"] = bus.url
    security = getattr(ctx.mesh, "security", None)
    if security is not None and getattr(security, "allow_private_targets", False):
        values.setdefault("allow_private_targets", True)
    return WorkspaceSettings.from_dict(values)


def create_service(ctx: ServiceContext) -> Service:
    """Factory for ``kind: workspace``."""
    return build_service(Service(ctx), settings_for(ctx), ctx.mesh.security.allowed_origins)


def build_service(
    service: Service, settings: WorkspaceSettings, allowed_origins: Any = ()
) -> Service:
    """Wire a :class:`Workspace` into ``service`` (also used by tests, without a mesh)."""
    from microhive.workspace.mcp_tools import workspace_tools

    ws = Workspace(settings)
    service.add_routes(rest_routes(ws, grants_from_settings(settings.tokens)))

    async def start() -> None:
        await ws.start()

    async def stop() -> None:
        await ws.aclose()

    async def store_ready() -> bool:
        await ws.ping()
        return True

    service.on_startup(start)
    service.on_shutdown(stop)
    service.add_ready_check("store", store_ready)
    tools = workspace_tools(ws)
    # As mesh_service does for tool services: tools/call latencies on /metrics, and
    # the MCP span (parented from params._meta) as the one server span of a call.
    tools.call_metrics = register_call_metrics(service.registry)
    service.add_protocol_path("/mcp")
    app = tools.asgi_app(
        path="/mcp", allowed_origins=allowed_origins or (), max_body_bytes=service.max_body_bytes
    )
    service.mount("", app)
    return service
