"""Public tool names: ``namespace.tool`` made valid for the big LLM APIs.

OpenAI, Anthropic and Gemini accept tool names matching ``^[a-zA-Z0-9_-]{1,64}$``.
The gateway keeps a *qualified* name ``namespace.tool`` for routing, globs and
the admin API, and shows callers a *public* name derived from it:

1. join with ``_``: ``calculator.add`` -> ``calculator_add``;
2. replace every character outside ``[a-zA-Z0-9_-]`` with ``_``;
3. if the result is longer than 64 characters, cut it to 55 and append ``_`` and
   8 hex digits of the SHA-256 of the qualified name;
4. if the name is already taken by another qualified name (``a_b.c`` and
   ``a.b_c`` both give ``a_b_c``), the later one gets the hash suffix of step 3.

Names are stable for the life of a :class:`NameTable`: a tool keeps its public
name while the gateway runs, whatever is registered after it.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_NAME", "NameTable", "public_name", "valid_public_name"]

MAX_NAME = 64
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
_VALID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _suffixed(base: str, qualified: str) -> str:
    digest = hashlib.sha256(qualified.encode()).hexdigest()[:8]
    return f"{base[: MAX_NAME - 9]}_{digest}"


def public_name(namespace: str, tool: str) -> str:
    """The public name of ``namespace.tool``, before collision handling."""
    base = _INVALID.sub("_", f"{namespace}_{tool}")
    if len(base) > MAX_NAME:
        return _suffixed(base, f"{namespace}.{tool}")
    return base


def valid_public_name(name: str) -> bool:
    return bool(_VALID.match(name))


class NameTable:
    """Assigns collision-free public names and maps them back to qualified names."""

    def __init__(self) -> None:
        self._public: dict[str, str] = {}  # qualified -> public
        self._qualified: dict[str, str] = {}  # public -> qualified

    def assign(self, namespace: str, tool: str) -> str:
        qualified = f"{namespace}.{tool}"
        known = self._public.get(qualified)
        if known is not None:
            return known
        name = public_name(namespace, tool)
        if name in self._qualified:
            name = _suffixed(_INVALID.sub("_", f"{namespace}_{tool}"), qualified)
        self._public[qualified] = name
        self._qualified[name] = qualified
        return name

    def qualified(self, public: str) -> str | None:
        return self._qualified.get(public)
