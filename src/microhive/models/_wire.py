"""What the two SDK providers share: tool-name mapping and error conversion.

Gateway tool names are namespaced with a dot (``workspace.search``) but the
OpenAI and Anthropic APIs only accept ``[A-Za-z0-9_-]`` in a tool name. Each call
maps names to a wire-safe form and maps the model's answer back, so neither the
agent nor the gateway ever sees the wire name.

SDK exceptions are converted by HTTP status, the same way for both SDKs:

======================  =====================  ==========================================
condition               microhive error        why
======================  =====================  ==========================================
401 / 403               UsageError             the key is wrong: retrying will not help
400 / 413 / 422         InvalidInput           the request (model, size, tools) was refused
404                     NotFound               unknown model or endpoint (base URL)
408, 429, 5xx, other    UpstreamError          the server failed or throttled; retry later
timeout                 TimeoutFailure         no answer in time
connection failure      ServiceUnavailable     nothing answered at the base URL
======================  =====================  ==========================================
"""

from __future__ import annotations

import re

from microhive.errors import (
    InvalidInput,
    MicrohiveError,
    NotFound,
    ServiceUnavailable,
    TimeoutFailure,
    UpstreamError,
    UsageError,
)
from microhive.models.types import ToolSpec

__all__ = ["ToolNames", "convert_status"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME = 64


class ToolNames:
    """A reversible mapping between tool names and wire-safe names for one call."""

    def __init__(self, tools: tuple[ToolSpec, ...]) -> None:
        self._to_wire: dict[str, str] = {}
        self._from_wire: dict[str, str] = {}
        for t in tools:
            base = _UNSAFE.sub("_", t.name.replace(".", "__"))[:_MAX_NAME] or "tool"
            wire, n = base, 1
            while wire in self._from_wire:
                n += 1
                suffix = f"_{n}"
                wire = base[: _MAX_NAME - len(suffix)] + suffix
            self._to_wire[t.name] = wire
            self._from_wire[wire] = t.name

    def wire(self, name: str) -> str:
        """The wire name of a tool (names of tools not offered pass through sanitised)."""
        return self._to_wire.get(name) or _UNSAFE.sub("_", name.replace(".", "__"))

    def original(self, wire: str) -> str:
        """The tool name a wire name stands for (unknown names are returned unchanged)."""
        return self._from_wire.get(wire, wire)


def convert_status(provider: str, status: int, detail: str, key_env: str | None) -> MicrohiveError:
    """The microhive error for an HTTP error status from a model API."""
    where = f"{provider} model API"
    if status in (401, 403):
        hint = f"; check the key in ${key_env}" if key_env else ""
        return UsageError(f"{where} refused the credentials ({status}): {detail}{hint}")
    if status in (400, 413, 422):
        return InvalidInput(f"{where} refused the request ({status}): {detail}")
    if status == 404:
        return NotFound(
            f"{where}: not found ({status}), check the model name and base URL: {detail}"
        )
    if status == 429:
        return UpstreamError(f"{where} is rate limiting ({status}): {detail}")
    return UpstreamError(f"{where} answered with an error ({status}): {detail}")


def timeout_error(provider: str, model: str) -> TimeoutFailure:
    return TimeoutFailure(f"{provider} model {model!r} did not answer in time")


def connection_error(provider: str, base_url: str, detail: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"cannot reach the {provider} model API at {base_url}: {detail}")
