"""Toolboxes: where an agent's tools come from.

:class:`LocalToolbox` serves plain Python callables in-process (for embedding an
agent in a script, and for tests of the loop); the gateway toolbox, which reaches
every tool of the mesh over MCP, lives beside the worker service.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from microhive.agents.loop import ToolOutcome
from microhive.context import CallContext
from microhive.errors import InvalidInput, MicrohiveError
from microhive.models.types import ToolSpec

__all__ = ["LocalToolbox"]

ToolFn = Callable[..., Any] | Callable[..., Awaitable[Any]]


class LocalToolbox:
    """Tools that are functions of this process: ``LocalToolbox({"add": (spec, fn)})``."""

    def __init__(self, tools: Mapping[str, tuple[ToolSpec, ToolFn]] | None = None) -> None:
        self._tools: dict[str, tuple[ToolSpec, ToolFn]] = dict(tools or {})
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def add(self, fn: ToolFn, *, name: str | None = None, description: str | None = None) -> None:
        """Add a function; its parameters become a (loose) JSON schema."""
        tool_name = name or fn.__name__
        params = {
            p: {"type": "string"}
            for p in inspect.signature(fn).parameters
            if p not in ("context", "self")
        }
        spec = ToolSpec(
            tool_name,
            description or inspect.getdoc(fn) or "",
            {"type": "object", "properties": params},
        )
        self._tools[tool_name] = (spec, fn)

    async def list_tools(self) -> list[ToolSpec]:
        return [spec for spec, _ in self._tools.values()]

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, context: CallContext
    ) -> ToolOutcome:
        self.calls.append((name, arguments))
        entry = self._tools.get(name)
        if entry is None:
            return ToolOutcome(f"unknown tool {name!r}", is_error=True)
        fn = entry[1]
        try:
            with context.activate():
                value = fn(**arguments)
                if inspect.isawaitable(value):
                    value = await value
        except TypeError as exc:
            return ToolOutcome(f"bad arguments for {name!r}: {exc}", is_error=True)
        except (MicrohiveError, ValueError, OSError) as exc:
            return ToolOutcome(f"{name} failed: {exc}", is_error=True)
        if isinstance(value, str):
            return ToolOutcome(value, data=value)
        try:
            return ToolOutcome(json.dumps(value, default=str), data=value)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"tool {name!r} returned a value that is not JSON: {exc}") from exc
