"""Checking a ``POST /v1/chat/completions`` body before llama.cpp sees it.

llama.cpp accepts many fields of its own (``n_predict``, ``id_slot``, ``lora``,
...) and is lenient about shapes, so the body is checked here against the
OpenAI fields the server supports, with bounds that keep one caller from
growing memory or work without limit: the number of messages and tools, the
characters of text, ``max_tokens`` at most the context size, ``top_logprobs``
at most 20. Anything else is a 400 naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from microhive.errors import InvalidInput, NotFound

__all__ = [
    "CHARS_PER_TOKEN",
    "MAX_MESSAGES",
    "MAX_STOP",
    "MAX_TOOLS",
    "ChatRequest",
    "parse_chat_request",
]

#: At most this many messages in one request.
MAX_MESSAGES = 1024
#: At most this many tools offered in one request.
MAX_TOOLS = 128
#: At most this many stop sequences.
MAX_STOP = 8
#: The text of a request (messages, tool schemas, response schema) may be at most
#: this many characters per token of context: far more than fits, so a real prompt
#: is never refused here, while an absurd one is refused before it is tokenized.
CHARS_PER_TOKEN = 32

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content", "refusal"}
)
#: OpenAI fields that change nothing here; accepted and dropped.
_IGNORED = frozenset({"user", "metadata", "store", "service_tier"})
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
    | _IGNORED
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A checked request: the body to hand to llama.cpp and how to answer it."""

    body: dict[str, Any]
    stream: bool
    include_usage: bool


def parse_chat_request(raw: bytes, *, alias: str, context_size: int) -> ChatRequest:
    """Parse and check a request body; :class:`InvalidInput` (400) or :class:`NotFound` (404).

    The returned body always has ``max_tokens`` (at most ``context_size``;
    the context size when the caller gave none) and the server's own model id.
    """
    body = _decode(raw)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidInput(f"unsupported fields: {', '.join(unknown)}")
    for key in _IGNORED:
        body.pop(key, None)

    model = body.get("model", alias)
    if not isinstance(model, str):
        raise InvalidInput(f"'model' must be a string, got {_kind(model)}")
    if model not in ("", alias):
        raise NotFound(f"model {model!r} is not served here; this server serves {alias!r}")
    body["model"] = alias

    budget = _Budget(context_size * CHARS_PER_TOKEN)
    _check_messages(body.get("messages"), budget)
    _check_tools(body, budget)
    _check_response_format(body.get("response_format"), budget)
    _check_sampling(body)
    body["max_tokens"] = _max_tokens(body, context_size)
    body.pop("max_completion_tokens", None)

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidInput(f"'stream' must be true or false, got {_kind(stream)}")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidInput("'stream_options' is only allowed with 'stream': true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise InvalidInput("'stream_options' must be an object with only 'include_usage'")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise InvalidInput("'stream_options.include_usage' must be true or false")
    return ChatRequest(body=body, stream=stream, include_usage=include_usage)


# ------------------------------------------------------------------ helpers


class _Budget:
    """Characters of text a request may still carry."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, text: str, what: str) -> None:
        self.used += len(text)
        if self.used > self.limit:
            raise InvalidInput(
                f"the request's text is over {self.limit} characters (at {what}); "
                "it cannot fit in the model's context"
            )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidInput("the body is empty; expected a JSON object")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object, got {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    return names.get(type(value), type(value).__name__)


def _check_messages(messages: Any, budget: _Budget) -> None:
    if not isinstance(messages, list):
        raise InvalidInput(f"'messages' must be an array of message objects, got {_kind(messages)}")
    if not messages:
        raise InvalidInput("'messages' must hold at least one message")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInput(f"'messages' holds {len(messages)} messages; at most {MAX_MESSAGES}")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidInput(f"'{where}' must be an object, got {_kind(message)}")
        extra = sorted(set(message) - _MESSAGE_KEYS)
        if extra:
            raise InvalidInput(f"'{where}' has unsupported fields: {', '.join(extra)}")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidInput(
                f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}, got {role!r}"
            )
        _check_content(message.get("content"), f"{where}.content", budget)
        for key in ("name", "tool_call_id", "reasoning_content", "refusal"):
            value = message.get(key)
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidInput(f"'{where}.{key}' must be a string, got {_kind(value)}")
                budget.spend(value, f"{where}.{key}")
        calls = message.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list) or len(calls) > MAX_TOOLS:
                raise InvalidInput(
                    f"'{where}.tool_calls' must be an array (at most {MAX_TOOLS}) "
                    "on an assistant message"
                )
            budget.spend(json.dumps(calls), f"{where}.tool_calls")


def _check_content(content: Any, where: str, budget: _Budget) -> None:
    if content is None or isinstance(content, str):
        budget.spend(content or "", where)
        return
    if not isinstance(content, list):
        raise InvalidInput(f"'{where}' must be a string or an array of parts, got {_kind(content)}")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise InvalidInput(
                f'\'{where}[{j}]\' must be a text part {{"type": "text", "text": ...}} '
                "(this model reads text only)"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidInput(f"'{where}[{j}].text' must be a string, got {_kind(text)}")
        budget.spend(text, f"{where}[{j}]")


def _check_tools(body: Mapping[str, Any], budget: _Budget) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
            raise InvalidInput(f"'tools' must be an array of at most {MAX_TOOLS} tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
            ):
                raise InvalidInput(
                    f'\'tools[{i}]\' must be {{"type": "function", "function": '
                    '{"name": ..., "parameters": {...}}}'
                )
        budget.spend(json.dumps(tools), "tools")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise InvalidInput(f"'tool_choice' must be a string or an object, got {_kind(choice)}")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidInput("'parallel_tool_calls' must be true or false")


def _check_response_format(value: Any, budget: _Budget) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidInput(
            '\'response_format\' must be {"type": "text"}, {"type": "json_object"} '
            'or {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}'
        )
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidInput("'response_format.json_schema.schema' must be a JSON schema object")
    budget.spend(json.dumps(value), "response_format")


def _number(body: Mapping[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"'{key}' must be a number, got {_kind(value)}")
    if not low <= value <= high:
        raise InvalidInput(f"'{key}' must be between {low:g} and {high:g}, got {value}")


def _integer(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'{key}' must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise InvalidInput(f"'{key}' must be between {low} and {high}, got {value}")
    return value


def _check_sampling(body: Mapping[str, Any]) -> None:
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "min_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "repeat_penalty", 0, 10)
    _integer(body, "top_k", 0, 1000)
    _integer(body, "seed", -(2**63), 2**64 - 1)
    _integer(body, "n", 1, 1)
    _integer(body, "top_logprobs", 0, 20)
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidInput("'logprobs' must be true or false")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in stops)
        ):
            raise InvalidInput(
                f"'stop' must be a string or an array of at most {MAX_STOP} non-empty strings "
                "(at most 256 characters each)"
            )
    bias = body.get("logit_bias")
    if bias is not None and (not isinstance(bias, dict) or len(bias) > 300):
        raise InvalidInput("'logit_bias' must be an object of at most 300 token ids")


def _max_tokens(body: Mapping[str, Any], context_size: int) -> int:
    limit = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"'{key}' must be an integer, got {_kind(value)}")
        if not 1 <= value <= context_size:
            raise InvalidInput(
                f"'{key}' must be between 1 and the context size ({context_size}), got {value}"
            )
        limit = value if limit is None else min(limit, value)
    return context_size if limit is None else limit
