"""The service runtime: write a microhive service as an ASGI app.

A service is a factory ``def create(ctx: ServiceContext) -> Service`` named in
the mesh file (``app: package.module:create``) or by a service kind. The
:class:`Service` it returns always serves ``/healthz``, ``/readyz`` and
``/metrics``, logs JSON lines carrying the trace id, checks the call context
and the bearer token, limits body sizes, and shuts down gracefully; see
``docs/services.md``.
"""

from microhive.service._app import DEFAULT_MAX_BODY_BYTES, Hook, ReadyCheck, Service
from microhive.service._context import (
    STATE_DIR,
    ServiceContext,
    mesh_token,
    port_file,
    service_url,
)
from microhive.service._errors import error_response, json_error, status_for
from microhive.service._logging import JsonFormatter, configure_logging
from microhive.service._metrics import ServiceMetrics
from microhive.service._runner import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PORT_IN_USE,
    ServiceFactory,
    build_service,
    resolve_factory,
    run_app,
    serve_service,
    settle_heap,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_PORT_IN_USE",
    "STATE_DIR",
    "Hook",
    "JsonFormatter",
    "ReadyCheck",
    "Service",
    "ServiceContext",
    "ServiceFactory",
    "ServiceMetrics",
    "build_service",
    "configure_logging",
    "error_response",
    "json_error",
    "mesh_token",
    "port_file",
    "resolve_factory",
    "run_app",
    "serve_service",
    "service_url",
    "settle_heap",
    "status_for",
]
