"""The typed values that go into and come out of a model call.

Every provider speaks these, so an agent loop never sees an SDK type:

* messages: :class:`SystemMessage`, :class:`UserMessage`, :class:`AssistantMessage`
  (text and/or :class:`ToolCall` s) and :class:`ToolResultMessage` (the answer to
  one tool call, matched by its id);
* :class:`ToolSpec`: a tool offered to the model (name, description, JSON schema);
* :class:`ChatResult`: the assistant's text and tool calls, why it stopped, the
  :class:`Usage` in tokens, which provider and model answered, and ``offline``
  (``True`` when no real language model produced it).

All of them are frozen dataclasses with ``to_dict()`` / ``from_dict()`` so they
can travel on the bus and be stored with a run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from microhive.context import CallContext
from microhive.errors import InvalidInput

__all__ = [
    "FINISH_REASONS",
    "AssistantMessage",
    "ChatHooks",
    "ChatRequest",
    "ChatResult",
    "FinishReason",
    "Message",
    "ResponseSchema",
    "SystemMessage",
    "ToolCall",
    "ToolResultMessage",
    "ToolSpec",
    "Usage",
    "UserMessage",
    "count_tokens",
    "message_from_dict",
    "message_to_dict",
]

#: Why a model stopped: a final answer, tool calls to run, the output limit, a
#: provider's content filter, or anything else a provider reported.
FinishReason = Literal["stop", "tool_calls", "length", "content_filter", "other"]
FINISH_REASONS: tuple[str, ...] = ("stop", "tool_calls", "length", "content_filter", "other")

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def count_tokens(text: str) -> int:
    """An honest, provider-free token estimate: words and punctuation marks.

    Real tokenizers split long words further, so this undercounts slightly for
    English (roughly 0.8 of a BPE count); it is used where no provider reports
    usage (offline and scripted models) and is stable across versions.
    """
    return len(_TOKEN.findall(text))


# ------------------------------------------------------------------ tools


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: a name, what it does, and its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InvalidInput("a tool needs a non-empty name")
        if not isinstance(self.parameters, Mapping):
            raise InvalidInput(f"tool {self.name!r}: parameters must be a JSON schema object")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolSpec:
        """Read ``{name, description, parameters|inputSchema|input_schema}`` (MCP shapes too)."""
        schema = data.get("parameters") or data.get("inputSchema") or data.get("input_schema")
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description") or ""),
            parameters=dict(schema) if schema else {"type": "object", "properties": {}},
        )


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for; ``id`` links it to its :class:`ToolResultMessage`.

    ``error`` is set when the model's arguments could not be read (not JSON, not an
    object): such a call is never run; the agent loop tells the model what was wrong.
    """

    id: str
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "arguments": dict(self.arguments)}
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        """Read ``{id, name, arguments}``; arguments may be a JSON string (decoded here).

        Arguments that do not decode to an object give a call with ``error`` set
        rather than an exception: a model's mistake is reported back to the model.
        """
        args = data.get("arguments") or {}
        error = data.get("error")
        name = str(data.get("name", ""))
        if isinstance(args, str):
            try:
                args = parse_arguments(args, name)
            except InvalidInput as exc:
                args, error = {}, exc.message
        elif not isinstance(args, Mapping):
            args, error = {}, f"arguments must be a JSON object, got {type(args).__name__}"
        return cls(
            id=str(data.get("id", "")),
            name=name,
            arguments=args,
            error=str(error) if error is not None else None,
        )


def parse_arguments(raw: str, tool: str) -> dict[str, Any]:
    """Decode a JSON arguments string; a model that wrote bad JSON is an InvalidInput.

    The message says where the JSON broke, in words a model can act on:
    ``arguments are not valid JSON at column 31: Expecting ',' delimiter``.
    """
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        raise InvalidInput(
            f"tool call {tool!r}: arguments are not valid JSON at {where}: {exc.msg}"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInput(
            f"tool call {tool!r}: arguments must be a JSON object, got {type(value).__name__} "
            f"{raw[:80]!r}"
        )
    return value


# --------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class SystemMessage:
    """Instructions for the model (the role prompt)."""

    content: str
    role: Literal["system"] = "system"


@dataclass(frozen=True, slots=True)
class UserMessage:
    """The task, or anything the user side says."""

    content: str
    role: Literal["user"] = "user"


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    """What the model said before: text and/or tool calls."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    role: Literal["assistant"] = "assistant"


@dataclass(frozen=True, slots=True)
class ToolResultMessage:
    """The result of one tool call, sent back to the model."""

    tool_call_id: str
    content: str
    name: str = ""
    is_error: bool = False
    role: Literal["tool"] = "tool"


Message = SystemMessage | UserMessage | AssistantMessage | ToolResultMessage


def message_to_dict(message: Message) -> dict[str, Any]:
    """A JSON-safe form of one message (see :func:`message_from_dict`)."""
    if isinstance(message, AssistantMessage):
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [c.to_dict() for c in message.tool_calls],
        }
    if isinstance(message, ToolResultMessage):
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "name": message.name,
            "content": message.content,
            "is_error": message.is_error,
        }
    return {"role": message.role, "content": message.content}


def message_from_dict(data: Mapping[str, Any]) -> Message:
    """Read a message written by :func:`message_to_dict`; bad input names what is wrong."""
    role = data.get("role")
    content = data.get("content", "")
    if not isinstance(content, str):
        raise InvalidInput(f"message content must be a string, got {type(content).__name__}")
    if role == "system":
        return SystemMessage(content)
    if role == "user":
        return UserMessage(content)
    if role == "assistant":
        calls = tuple(ToolCall.from_dict(c) for c in data.get("tool_calls") or ())
        return AssistantMessage(content, calls)
    if role == "tool":
        return ToolResultMessage(
            tool_call_id=str(data.get("tool_call_id", "")),
            content=content,
            name=str(data.get("name") or ""),
            is_error=bool(data.get("is_error", False)),
        )
    raise InvalidInput(f"unknown message role {role!r}; expected system, user, assistant or tool")


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call consumed, as the provider reported them (or estimated offline)."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One answer of a model: text and/or tool calls, with usage and provenance."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    provider: str = ""
    model: str = ""
    #: True when no real language model produced this (offline or scripted).
    offline: bool = False

    def message(self) -> AssistantMessage:
        """The assistant message to append to the conversation for the next turn."""
        return AssistantMessage(self.text, self.tool_calls)

    def charge(self, context: CallContext) -> CallContext:
        """``context`` after spending this call's tokens (raises BudgetExhausted when over)."""
        return context.spend(tokens=self.usage.total_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "finish_reason": self.finish_reason,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            },
            "provider": self.provider,
            "model": self.model,
            "offline": self.offline,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatResult:
        usage = data.get("usage") or {}
        reason = data.get("finish_reason", "stop")
        calls = tuple(ToolCall.from_dict(c) for c in data.get("tool_calls") or ())
        return cls(
            text=str(data.get("text") or ""),
            tool_calls=calls,
            finish_reason=reason if reason in FINISH_REASONS else "other",
            usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
            provider=str(data.get("provider", "")),
            model=str(data.get("model", "")),
            offline=bool(data.get("offline", False)),
        )


@dataclass(frozen=True, slots=True)
class ResponseSchema:
    """A JSON schema the answer's text must match (structured output), with a name.

    ``schema`` may use what a grammar-constrained local server enforces (a root
    ``anyOf``, ``prefixItems``); ``loose``, when given, is a plain object schema
    for APIs that accept less (Anthropic's tool input, OpenAI's hosted API). The
    answer is validated by the caller either way.
    """

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    loose: Mapping[str, Any] | None = None

    def plain(self) -> Mapping[str, Any]:
        """The schema for an API that needs a plain object schema."""
        return self.loose if self.loose is not None else self.schema


@dataclass(frozen=True, slots=True)
class ChatHooks:
    """Who to tell while a call runs: ``on_text`` gets each streamed piece of text,
    ``on_retry`` each retry (the attempt about to be made, the reason, the wait)."""

    on_text: Callable[[str], Awaitable[None]] | None = None
    on_retry: Callable[[int, str, float], Awaitable[None]] | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call as a provider implementation receives it (validated, defaults applied).

    ``timeout`` is what is left until the caller's deadline (``None``: no deadline).
    The scripted model records these, so tests can assert what an agent sent.
    """

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    timeout: float | None = None
    context: CallContext | None = None
    #: When set, the answer's text must be one JSON value matching this schema; the
    #: provider asks for it with its structured-output mechanism.
    response_schema: ResponseSchema | None = None
    #: Streaming and retry notifications for whoever watches the call (may be None).
    hooks: ChatHooks | None = None

    @property
    def system(self) -> str:
        """All system messages joined (providers that take one system prompt use this)."""
        return "\n\n".join(m.content for m in self.messages if isinstance(m, SystemMessage))

    def input_text(self) -> str:
        """Everything the model reads, flattened, for token estimates."""
        parts: list[str] = []
        for m in self.messages:
            parts.append(m.content)
            if isinstance(m, AssistantMessage):
                parts.extend(json.dumps(c.to_dict()) for c in m.tool_calls)
        parts.extend(json.dumps(t.to_dict()) for t in self.tools)
        return "\n".join(parts)


def validate_messages(messages: Sequence[Any]) -> tuple[Message, ...]:
    """Refuse an empty conversation or a foreign object, naming the position."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidInput("messages must be a list of message objects")
    if not messages:
        raise InvalidInput("messages must not be empty")
    allowed = (SystemMessage, UserMessage, AssistantMessage, ToolResultMessage)
    for i, m in enumerate(messages):
        if not isinstance(m, allowed):
            raise InvalidInput(
                f"messages[{i}]: expected SystemMessage, UserMessage, AssistantMessage or "
                f"ToolResultMessage, got {type(m).__name__}"
            )
    return tuple(messages)
