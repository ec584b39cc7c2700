"""The MCP gateway: one endpoint for every registered tool service.

* :class:`Gateway` -- registry, pooled upstream sessions, the catalogue of
  namespaced tools, role-filtered routing with the call context, hot swap,
  per-upstream fault isolation and the rug-pull hold;
* :class:`GatewayHTTP` -- the MCP endpoint (``/mcp``) and the REST admin API
  (``/admin/...``) over it;
* :func:`create_service` -- the ``gateway`` service kind of the mesh file.

See ``docs/gateway.md``.
"""

from __future__ import annotations

from microhive.errors import MissingDependency

try:
    import mcp as _sdk  # noqa: F401 - fail early with the install hint
except ImportError as _exc:  # pragma: no cover - the dev install has the extra
    raise MissingDependency("mcp", "mcp", "the MCP gateway") from _exc

from .core import Gateway, GatewaySettings, ToolEntry, tool_error
from .http import GatewayHTTP
from .naming import NameTable, public_name
from .roles import Caller, RoleAuth
from .service import create_service

__all__ = [
    "Caller",
    "Gateway",
    "GatewayHTTP",
    "GatewaySettings",
    "NameTable",
    "RoleAuth",
    "ToolEntry",
    "create_service",
    "public_name",
    "tool_error",
]
