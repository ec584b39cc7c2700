"""The ``gateway`` service kind: the gateway as a mesh service.

The mesh file entry::

    services:
      gateway:
        kind: gateway
        port: 8700
        settings:
          refresh_ttl: 60          # seconds between tool-list refreshes
          health_interval: 10
          resilience: {timeout: 30, retries: 2, failure_threshold: 5, cooldown: 5}
          upstreams:               # extra tool services outside this mesh file
            - {namespace: search, url: "http://127.0.0.1:9000/mcp", version: v1}

Every tool service of the mesh is registered automatically. Runtime
registrations are kept in ``.microhive/gateway-registry.json``.

The service's own bearer check is replaced by the gateway's: ``/mcp`` accepts
the role tokens (and the mesh token), ``/admin`` only the mesh token.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

from microhive.service import Service, ServiceContext

from ..registry import Registry, RegistryStore, specs_from_mesh
from .core import Gateway, GatewaySettings
from .http import GatewayHTTP
from .roles import RoleAuth

__all__ = ["create_service"]


def create_service(ctx: ServiceContext) -> Service:
    """Build the gateway service for one replica (the mesh file's ``kind: gateway``)."""
    settings = GatewaySettings.from_settings(ctx.spec.settings)
    store = RegistryStore(ctx.state_dir / settings.registry_file)
    registry = Registry(specs_from_mesh(ctx.mesh, ctx.spec.settings, ctx.state_dir), store)
    gateway = Gateway(
        registry,
        RoleAuth.from_mesh(ctx.mesh, os.environ),
        settings,
        upstream_token=ctx.token,
    )
    http = GatewayHTTP(
        gateway,
        allowed_origins=list(ctx.mesh.security.allowed_origins),
        max_body_bytes=ctx.spec.max_body_bytes,
        bind_host=ctx.host,
    )
    service = Service(ctx, token="")  # "": the gateway checks tokens itself (roles)
    stack = AsyncExitStack()

    async def start() -> None:
        await stack.enter_async_context(gateway)
        await stack.enter_async_context(http.run())

    async def stop() -> None:
        await stack.aclose()

    async def ready() -> bool:
        return gateway.running

    service.on_startup(start)
    service.on_shutdown(stop)
    service.add_ready_check("gateway", ready)
    # MCP requests are traced by the MCP server span (parented from params._meta),
    # not by an HTTP span that would start an orphan trace per call
    service.add_protocol_path("/mcp")
    service.mount("", http.app(), lifespan=False)
    return service
