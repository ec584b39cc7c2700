"""Tool calls that a model wrote as text, recovered into real tool calls.

Many open models (and the servers in front of them) do not return OpenAI-style
``tool_calls``: they write the call in the answer's text, as a bare JSON object,
inside a code fence, or between ``<tool_call>`` tags, and the server reports a
plain ``stop``. A loop that only looks at ``tool_calls`` then takes the call for
a final answer, and nothing runs. Each model entry of the mesh file says how its
calls arrive (``tool_calls: auto | native | content``, see
:class:`~microhive.config.ModelSpec`); :func:`recover_tool_calls` is the reader
for the text forms:

* ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen, Hermes, ...),
* a fenced block (```` ```json ````, ```` ```tool_call ````) holding such an object,
* a bare object or a list of objects, anywhere in the text.

An object counts as a call when it has the shape of one -- ``name`` plus
``arguments`` (or ``parameters`` / ``args`` / ``input``), or OpenAI's
``{"type": "function", "function": {...}}`` -- and either names a tool on offer
(by its own name or its wire name, ``workspace__search``) or has nothing but the
call's keys. So a JSON answer that merely mentions a ``name`` is left alone,
while a call of an unknown tool is still recovered and the loop tells the model
that tool does not exist. Arguments given as a JSON string are decoded; when they
do not decode, the call carries ``error`` and is never run.

The scan is bounded: at most :data:`MAX_SCAN` characters and :data:`MAX_CALLS`
calls, each object decoded once from its opening brace. A call written several
times in one answer (small models repeat themselves until their token limit) is
asked for once.

:func:`content_mode_prompt` is the instruction a ``content``-mode model gets in
place of native tools: each tool's name, description and schema, and the one
format to answer in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from microhive.models.types import ToolCall, ToolSpec, parse_arguments

__all__ = ["MAX_ATTEMPTS", "MAX_CALLS", "MAX_SCAN", "content_mode_prompt", "recover_tool_calls"]

#: Characters of an answer that are scanned for calls (answers are bounded by
#: max_tokens anyway; this keeps a pathological answer cheap).
MAX_SCAN = 64 * 1024
#: Calls recovered from one answer at most.
MAX_CALLS = 16
#: Bare JSON values tried per answer at most (each is one decode from its brace).
MAX_ATTEMPTS = 256

_OPENING = re.compile(r'\{\s*"|\[\s*\{')
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"```[ \t]*(?:json|tool_call|tool|javascript)?[ \t]*\n(.*?)```", re.DOTALL)
_ARG_KEYS = ("arguments", "parameters", "args", "input")
_CALL_KEYS = frozenset({"name", "id", "type", *_ARG_KEYS})
_decoder = json.JSONDecoder()


def _wire(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name.replace(".", "__"))


def _lookup(tools: Sequence[ToolSpec]) -> dict[str, str]:
    """Every way a model may spell an offered tool's name, to the name itself."""
    names: dict[str, str] = {}
    for t in tools:
        for spelling in (t.name, _wire(t.name), t.name.lower(), _wire(t.name).lower()):
            names.setdefault(spelling, t.name)
    return names


def _as_call(obj: Any, names: Mapping[str, str], index: int) -> ToolCall | None:
    """A tool call when ``obj`` has the shape of one, else None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {...}}
        inner = obj["function"]
        if set(obj) - {"type", "function", "id"}:
            return None
        obj = {**inner, "id": obj.get("id", inner.get("id"))}
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    arg_key = next((k for k in _ARG_KEYS if k in obj), None)
    known = names.get(name) or names.get(name.lower())
    only_call_keys = not (set(obj) - _CALL_KEYS)
    if known is None and not (only_call_keys and arg_key is not None):
        return None  # some other JSON that happens to have a "name"
    if known is not None and not only_call_keys and arg_key is None:
        return None  # e.g. a findings record {"name": "workspace.read", "notes": ...}
    raw = obj.get(arg_key) if arg_key is not None else {}
    error: str | None = None
    arguments: dict[str, Any] = {}
    if isinstance(raw, str):
        try:
            arguments = parse_arguments(raw, known or name)
        except Exception as exc:  # InvalidInput: the model's mistake, reported to it
            error = getattr(exc, "message", str(exc))
    elif isinstance(raw, dict):
        arguments = raw
    elif raw is None:
        arguments = {}
    else:
        error = (
            f"tool call {known or name!r}: arguments must be a JSON object, "
            f"got {type(raw).__name__}"
        )
    call_id = obj.get("id")
    return ToolCall(
        id=str(call_id) if isinstance(call_id, str) and call_id else f"text_call_{index}",
        name=known or name.strip(),
        arguments=arguments,
        error=error,
    )


def _calls_in(value: Any, names: Mapping[str, str], start: int) -> list[ToolCall]:
    items = value if isinstance(value, list) else [value]
    calls: list[ToolCall] = []
    for item in items:
        call = _as_call(item, names, start + len(calls))
        if call is None:
            return []  # a list is a batch of calls only when every item is one
        calls.append(call)
    return calls


def _decode_at(text: str, at: int) -> tuple[Any, int] | None:
    try:
        return _decoder.raw_decode(text, at)
    except (json.JSONDecodeError, RecursionError):
        return None


def _broken_call(block: str, names: Mapping[str, str], index: int) -> ToolCall | None:
    """A tagged or fenced block that names a tool but is not valid JSON: a call with
    ``error`` saying where the JSON broke, so the model is told and can try again."""
    found = re.search(r'"name"\s*:\s*"([^"]{1,128})"', block)
    if found is None:
        return None
    name = names.get(found.group(1)) or names.get(found.group(1).lower())
    if name is None:
        return None
    try:
        json.loads(block)
    except json.JSONDecodeError as exc:
        return ToolCall(
            id=f"text_call_{index}",
            name=name,
            error=f"tool call {name!r}: the call is not valid JSON at column {exc.colno}: "
            f"{exc.msg}",
        )
    return None


def recover_tool_calls(text: str, tools: Sequence[ToolSpec]) -> tuple[list[ToolCall], str]:
    """The tool calls written in ``text`` and the text without them.

    Returns ``([], text)`` when the text holds no call. See the module docstring
    for the forms read and the shape an object must have.
    """
    if not text or ("{" not in text and "<tool_call>" not in text):
        return [], text
    scan = text[:MAX_SCAN]
    names = _lookup(tools)
    calls: list[ToolCall] = []
    spans: list[tuple[int, int]] = []

    # Tagged and fenced blocks first: they say "this is a call" on their own.
    for pattern in (_TAGGED, _FENCED):
        for found in pattern.finditer(scan):
            if any(a <= found.start() < b for a, b in spans):
                continue
            block = found.group(1).strip()
            decoded = _decode_at(block, 0) if block[:1] in "{[" else None
            got = _calls_in(decoded[0], names, len(calls)) if decoded else []
            if not got and pattern is _TAGGED:
                broken = _broken_call(block, names, len(calls))
                got = [broken] if broken else []
            if got:
                calls.extend(got)
                spans.append((found.start(), found.end()))
            if len(calls) >= MAX_CALLS:
                break

    # Then bare JSON: each object (or list of objects) outside the blocks taken.
    at = 0
    attempts = 0
    while len(calls) < MAX_CALLS and attempts < MAX_ATTEMPTS:
        opening = _OPENING.search(scan, at)
        if opening is None:
            break
        nxt = opening.start()
        inside = next((b for a, b in spans if a <= nxt < b), None)
        if inside is not None:
            at = inside
            continue
        attempts += 1
        decoded = _decode_at(scan, nxt)
        if decoded is None:
            at = nxt + 1
            continue
        value, end = decoded
        got = _calls_in(value, names, len(calls))
        if got:
            calls.extend(got)
            spans.append((nxt, end))
            at = end
        else:
            at = nxt + 1
    if not calls:
        return [], text
    # A small model may write the same call again and again until its token limit:
    # one answer asks for each distinct call once.
    unique: dict[str, ToolCall] = {}
    for call in calls:
        key = call.name + "\x00" + json.dumps(dict(call.arguments), sort_keys=True, default=str)
        unique.setdefault(key, call)
    calls = list(unique.values())
    rest: list[str] = []
    last = 0
    for a, b in sorted(spans):
        rest.append(scan[last:a])
        last = b
    rest.append(text[last:])
    return calls[:MAX_CALLS], "".join(rest).strip()


_CONTENT_PROMPT = """You can call these tools. To call one, answer with ONLY this, and nothing else:
<tool_call>{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}</tool_call>
You will get the result in the next message. When you need no more tools, answer in plain text.
Tools:
{tools}"""


def content_mode_prompt(tools: Sequence[ToolSpec]) -> str:
    """The system-prompt section that offers ``tools`` to a model with no native tool calls."""
    lines = []
    for t in tools:
        schema = json.dumps(dict(t.parameters), separators=(",", ":"))
        lines.append(f"- {t.name}: {' '.join(t.description.split())}\n  arguments schema: {schema}")
    return _CONTENT_PROMPT.format(tools="\n".join(lines))
