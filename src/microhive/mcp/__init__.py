"""Tool-as-a-Service over the Model Context Protocol.

* :mod:`microhive.mcp.server` -- plain functions served as an MCP tool service
  (:class:`ToolService`, :func:`tool_service`);
* :mod:`microhive.mcp.openapi` -- a REST service with an OpenAPI document served
  as MCP tools (:func:`openapi_tools`);
* :mod:`microhive.mcp.security` -- the Origin and bearer-token checks every MCP
  endpoint applies (:class:`McpGuard`).

The names below load on first use, so ``import microhive.mcp`` works without the
``mcp`` extra and a missing SDK is reported with its install hint.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from microhive.errors import MissingDependency

if TYPE_CHECKING:
    from microhive.mcp.openapi import OpenApiTools, openapi_tools
    from microhive.mcp.security import McpGuard
    from microhive.mcp.server import ToolService, tool_service
    from microhive.mcp.services import load_tool_service, mesh_service

__all__ = [
    "McpGuard",
    "OpenApiTools",
    "ToolService",
    "load_tool_service",
    "mesh_service",
    "openapi_tools",
    "tool_service",
]

_WHERE = {
    "McpGuard": "microhive.mcp.security",
    "OpenApiTools": "microhive.mcp.openapi",
    "openapi_tools": "microhive.mcp.openapi",
    "ToolService": "microhive.mcp.server",
    "load_tool_service": "microhive.mcp.services",
    "mesh_service": "microhive.mcp.services",
    "tool_service": "microhive.mcp.server",
}


def __getattr__(name: str) -> Any:
    module_name = _WHERE.get(name)
    if module_name is None:
        raise AttributeError(f"module 'microhive.mcp' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "mcp":
            raise MissingDependency("mcp", "mcp", "MCP tool services") from exc
        raise
    return getattr(module, name)
