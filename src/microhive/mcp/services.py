"""Tool services as mesh services, and tool services named by import path.

* :func:`mesh_service` -- serve a :class:`~microhive.mcp.server.ToolService` as a
  microhive :class:`~microhive.service.Service`: ``/mcp`` beside ``/healthz``,
  ``/readyz`` and ``/metrics``, with the runtime's auth, limits and logs;
* :func:`create_service` -- the factory of the mesh kind ``tool``;
* :func:`load_tool_service` -- ``"pkg.module:fn1,fn2"`` to a ToolService;
* :func:`upstream_url` -- where another service of the mesh listens.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from microhive.errors import ConfigError, InvalidInput
from microhive.mcp.server import ToolService, tool_service

if TYPE_CHECKING:
    from microhive.service import Service, ServiceContext

__all__ = ["create_service", "load_tool_service", "mesh_service", "upstream_url"]


def load_tool_service(target: str, name: str | None = None) -> ToolService:
    """Build a :class:`ToolService` from an import path.

    * ``"pkg.module:attr"`` -- ``attr`` is a ToolService, or a callable returning
      one (called with no arguments), or a plain function (served alone);
    * ``"pkg.module:fn1,fn2"`` -- those functions;
    * ``"pkg.module"`` -- the public functions listed in the module's ``__all__``.
    """
    module_name, _, attrs = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import tool module {module_name!r}: {exc}") from exc
    svc_name = name or module_name.rsplit(".", 1)[-1]
    if not attrs:
        names = [n for n in getattr(module, "__all__", []) if callable(getattr(module, n, None))]
        if not names:
            raise ConfigError(
                f"module {module_name!r} lists no functions in __all__; "
                "name them as 'module:fn1,fn2'"
            )
        return tool_service(svc_name, [getattr(module, n) for n in names])
    objects = []
    for attr in (a.strip() for a in attrs.split(",")):
        if not hasattr(module, attr):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
        objects.append(getattr(module, attr))
    if len(objects) == 1:
        obj = objects[0]
        if isinstance(obj, ToolService):
            return obj
        if callable(obj) and _is_factory(obj):
            made = obj()
            if isinstance(made, ToolService):
                return made
            raise ConfigError(f"{target} returned {type(made).__name__}, not a ToolService")
    if not all(callable(o) for o in objects):
        raise InvalidInput(f"{target}: every name must be a function")
    return tool_service(svc_name, objects)


def _is_factory(obj: Callable[..., Any]) -> bool:
    """A zero-argument callable annotated to return a ToolService (not a tool itself)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    returns = sig.return_annotation
    name = returns if isinstance(returns, str) else getattr(returns, "__name__", "")
    return not sig.parameters and "ToolService" in str(name)


def mesh_service(svc: ToolService, ctx: ServiceContext) -> Service:
    """Serve ``svc`` as a microhive service: ``/mcp`` beside the standard probe endpoints.

    The service runtime adds bearer auth (when the mesh sets a token), body limits
    and logs; the MCP route adds the Origin check (``security.allowed_origins``).
    ``/metrics`` gets ``tools/call`` latencies by tool and outcome; each call is
    a ``tools/call`` span in the caller's trace (from ``params._meta``), with no
    separate HTTP span unless the request carried a ``traceparent`` header.
    """
    from microhive.service import Service
    from microhive.tracing import register_call_metrics

    service = Service(ctx)
    svc.call_metrics = register_call_metrics(service.registry)
    service.add_protocol_path("/mcp")
    app = svc.asgi_app(
        allowed_origins=ctx.mesh.security.allowed_origins,
        max_body_bytes=ctx.spec.max_body_bytes,
    )
    service.mount("", app)
    return service


def upstream_url(ctx: ServiceContext, name: str) -> str:
    """The base URL of replica 0 of another service of the mesh.

    Uses its fixed port, else the port file the runner wrote for it.
    """
    spec = ctx.mesh.service(name)
    host = spec.host or ctx.mesh.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = spec.port
    if port is None:
        port_file = ctx.state_dir / "ports" / f"{name}-0.port"
        try:
            port = int(port_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"service {ctx.name!r}: cannot find the port of {name!r} "
                f"(no fixed port and no readable {port_file}): {exc}"
            ) from exc
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``tool``: serve Python functions named in ``settings.tools``.

    ``settings.tools`` is an import path (see :func:`load_tool_service`):
    ``"pkg.module:fn1,fn2"``, ``"pkg.module:service"`` or ``"pkg.module"``.
    """
    target = ctx.spec.settings.get("tools") or ctx.spec.settings.get("module")
    if not isinstance(target, str) or not target:
        raise ConfigError(
            f"service {ctx.name!r} (kind tool) needs settings.tools: 'package.module:fn1,fn2'"
        )
    return mesh_service(load_tool_service(target, name=ctx.name), ctx)
