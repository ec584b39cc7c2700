"""Checking a model's tool call before it runs, and saying what is wrong in plain words.

A model's call never reaches a tool when it names no tool on offer, when its
arguments were not JSON (the provider marks such a call with ``error``), or when
they do not match the tool's input schema. :func:`check_call` returns the problem
as a sentence the model can act on -- ``arguments are not valid JSON at column
31: Expecting ',' delimiter``, ``missing required field 'species'``, ``field
'a' must be a number, not the string 'five'`` -- and the agent loop sends it back
as the call's (error) result, so the model tries again within its step budget.

The schema check uses ``jsonschema`` (the MCP SDK's own dependency) with two
keywords left out: ``pattern``/``patternProperties`` (a schema comes from a tool
service, and its regular expression must not get to run a backtracking match on
the agent's event loop; the tool checks its own patterns) and ``format``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from microhive.models.types import ToolCall, ToolSpec

__all__ = ["ArgumentChecker", "check_call"]

_MAX_PROBLEMS = 3
_TYPE_WORDS = {
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _where(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _words(error: Any) -> str:
    """One jsonschema ValidationError as a sentence."""
    where = _where(error.absolute_path)
    field = f"field '{where}'" if where else "the arguments"
    kind = error.validator
    if kind == "required":
        missing = next((m for m in error.validator_value if m not in error.instance), None)
        prefix = f"'{where}.' " if where else ""
        return f"missing required field {prefix}'{missing}'" if missing else error.message
    if kind == "type":
        wanted = error.validator_value
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        expected = " or ".join(_TYPE_WORDS.get(n, n) for n in names)
        got = _json_type(error.instance)
        return f"{field} must be {expected}, not the {got} {_short(error.instance)}"
    if kind == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extra = sorted(set(error.instance) - set(allowed))
        hint = f" (fields: {', '.join(allowed)})" if allowed else ""
        return f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}{hint}"
    if kind == "enum":
        options = ", ".join(_short(v) for v in error.validator_value)
        return f"{field} must be one of {options}, not {_short(error.instance)}"
    return f"{field}: {error.message}"


class ArgumentChecker:
    """Checks calls against the tools on offer; one compiled validator per tool."""

    def __init__(self, tools: Sequence[ToolSpec]) -> None:
        self._tools = {t.name: t for t in tools}
        self._validators: dict[str, Any] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def _validator(self, spec: ToolSpec) -> Any:
        if spec.name not in self._validators:
            self._validators[spec.name] = _compile(spec.parameters)
        return self._validators[spec.name]

    def clean(self, call: ToolCall) -> ToolCall:
        """``call`` with two slips of small models undone before it is checked.

        A ``null`` for an optional argument means "not given" (its default
        applies): models write ``"expected_version": null`` for every field they
        were not asked to fill. And an object or list where the schema wants a
        string is sent as its JSON text: a model saving ``findings.json`` writes
        the findings themselves as ``content``.
        """
        spec = self._tools.get(call.name)
        if spec is None or call.error:
            return call
        props = spec.parameters.get("properties") or {}
        required = set(spec.parameters.get("required") or ())
        kept: dict[str, Any] = {}
        for key, value in call.arguments.items():
            if value is None and key not in required:
                continue
            wanted = props.get(key) if isinstance(props, Mapping) else None
            if isinstance(value, dict | list) and _wants_string(wanted):
                value = json.dumps(value, ensure_ascii=False, indent=2)
            kept[key] = value
        if kept == dict(call.arguments):
            return call
        return ToolCall(call.id, call.name, kept, call.error)

    def problems(self, call: ToolCall) -> list[str]:
        """What is wrong with ``call`` (empty when it may run)."""
        if call.error:
            return [_plain(call.error, call.name)]
        spec = self._tools.get(call.name)
        if spec is None:
            offered = ", ".join(self.names) or "none"
            return [f"there is no tool named {call.name!r}; the tools you can call are: {offered}"]
        validator = self._validator(spec)
        if validator is None:
            return []
        found: list[str] = []
        for error in _errors(validator, dict(call.arguments)):
            found.append(_words(error))
            if len(found) >= _MAX_PROBLEMS:
                break
        return found


def _wants_string(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    if schema.get("type") == "string":
        return True
    options = schema.get("anyOf") or schema.get("oneOf") or ()
    kinds = {o.get("type") for o in options if isinstance(o, Mapping)}
    return "string" in kinds and not kinds & {"object", "array"}


def check_call(call: ToolCall, tools: Sequence[ToolSpec]) -> str | None:
    """The problem with ``call`` in plain words, or None when it may run."""
    problems = ArgumentChecker(tools).problems(call)
    return "; ".join(problems) if problems else None


def _plain(error: str, name: str) -> str:
    prefix = f"tool call {name!r}: "
    return error[len(prefix) :] if error.startswith(prefix) else error


def _errors(validator: Any, instance: Mapping[str, Any]) -> Iterator[Any]:
    # Deepest first within each branch: "field 'a' must be ..." before "the arguments ...".
    yield from sorted(validator.iter_errors(instance), key=lambda e: list(e.path))


def _compile(schema: Mapping[str, Any]) -> Any:
    """A validator for a tool's input schema, or None when the schema itself is broken."""
    import jsonschema  # type: ignore[import-untyped]
    from jsonschema import validators

    base = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    checkers = dict(base.VALIDATORS)
    for keyword in ("pattern", "patternProperties", "format"):
        checkers.pop(keyword, None)
    lenient = validators.create(
        meta_schema=base.META_SCHEMA,
        validators=checkers,
        type_checker=base.TYPE_CHECKER,
        format_checker=None,
    )
    try:
        lenient.check_schema(schema)
    except jsonschema.SchemaError:
        return None  # the tool's schema is broken: the tool's own checks decide
    return lenient(schema)
