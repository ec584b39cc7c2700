"""Anthropic's Messages API, through the official ``anthropic`` SDK.

Differences from the OpenAI shape, handled here so callers never see them: the
system prompt is a separate parameter; ``max_tokens`` is required (we default to
:data:`DEFAULT_MAX_TOKENS`); tool calls are ``tool_use`` content blocks with an
``input`` object; tool results are ``tool_result`` blocks inside a *user* turn,
and consecutive turns of the same role are merged because the API expects user
and assistant turns to alternate. Structured output is a forced tool: the schema
is offered as the one tool the model must call, and its input is the answer's
JSON text. Retries are the base class's; the SDK's own are off. Streaming is not
used: the whole answer arrives at once.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic

from microhive.models._wire import ToolNames, connection_error, convert_status, timeout_error
from microhive.models.base import ModelProvider, ToolCallMode
from microhive.models.types import (
    AssistantMessage,
    ChatRequest,
    ChatResult,
    FinishReason,
    Message,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    Usage,
)

__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicModel"]

#: The Messages API needs an output limit on every call; used when none is configured.
DEFAULT_MAX_TOKENS = 4096

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "refusal": "content_filter",
}


class AnthropicModel(ModelProvider):
    """A Claude model behind the Anthropic Messages API (or a compatible server)."""

    provider = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        key_env: str | None = None,
        tool_calls: ToolCallMode = "auto",
        context_size: int | None = None,
        essential_arguments: bool = False,
    ) -> None:
        super().__init__(
            model,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=timeout,
            retries=retries,
            tool_calls=tool_calls,
            context_size=context_size,
            essential_arguments=essential_arguments,
        )
        self.base_url = base_url or "https://api.anthropic.com"
        self._key_env = key_env
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=0
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def _chat(self, request: ChatRequest) -> ChatResult:
        names = ToolNames(request.tools)
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": _turns(request.messages, names),
        }
        if request.system:
            params["system"] = request.system
        if request.tools:
            params["tools"] = [
                {
                    "name": names.wire(t.name),
                    "description": t.description,
                    "input_schema": dict(t.parameters),
                }
                for t in request.tools
            ]
        if request.temperature is not None:
            params["temperature"] = min(request.temperature, 1.0)  # the API's range is 0..1
        forced = request.response_schema
        if forced is not None:
            params["tools"] = [
                {
                    "name": _wire_schema_name(forced.name),
                    "description": forced.description or "Answer with this structure.",
                    "input_schema": dict(forced.plain()),
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": _wire_schema_name(forced.name)}
        if request.timeout is not None:
            params["timeout"] = request.timeout + 1.0  # the base class's clock ends it first
        try:
            message = await self._client.messages.create(**params)
        except anthropic.APITimeoutError as exc:
            raise timeout_error(self.provider, request.model) from exc
        except anthropic.APIConnectionError as exc:
            raise connection_error(self.provider, self.base_url, str(exc)) from exc
        except anthropic.APIStatusError as exc:
            raise convert_status(
                self.provider, exc.status_code, _detail(exc.body, exc.message), self._key_env
            ) from exc
        except anthropic.APIError as exc:
            raise convert_status(self.provider, 502, str(exc), self._key_env) from exc
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            kind = getattr(block, "type", "")
            if kind == "text":
                texts.append(str(getattr(block, "text", "")))
            elif kind == "tool_use":
                raw = getattr(block, "input", None)
                calls.append(
                    ToolCall(
                        id=str(getattr(block, "id", "")),
                        name=names.original(str(getattr(block, "name", ""))),
                        arguments=dict(raw) if isinstance(raw, dict) else {},
                    )
                )
        usage = message.usage
        reason = _FINISH.get(str(message.stop_reason), "other")
        if forced is not None:
            # The forced tool's input is the structured answer, not a call to run.
            answer = next((c for c in calls if c.name == _wire_schema_name(forced.name)), None)
            texts = [json.dumps(dict(answer.arguments))] if answer is not None else texts
            calls = []
            reason = "stop" if reason == "tool_calls" else reason
        return ChatResult(
            text="".join(texts),
            tool_calls=tuple(calls),
            finish_reason=reason,
            usage=Usage(usage.input_tokens or 0, usage.output_tokens or 0),
            provider=self.provider,
            model=str(message.model or request.model),
            offline=False,
        )


def _wire_schema_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "answer"


def _turns(messages: tuple[Message, ...], names: ToolNames) -> list[dict[str, Any]]:
    """Alternating user/assistant turns of content blocks (system messages go elsewhere)."""
    turns: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            continue
        blocks: list[dict[str, Any]]
        if isinstance(m, AssistantMessage):
            role = "assistant"
            blocks = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [
                {
                    "type": "tool_use",
                    "id": c.id,
                    "name": names.wire(c.name),
                    "input": dict(c.arguments),
                }
                for c in m.tool_calls
            ]
        elif isinstance(m, ToolResultMessage):
            role = "user"
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": m.content,
            }
            if m.is_error:
                block["is_error"] = True
            blocks = [block]
        else:
            role = "user"
            blocks = [{"type": "text", "text": m.content}]
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _detail(body: object, fallback: str) -> str:
    """The API's message from ``{"type": "error", "error": {"message": ...}}`` when present."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return fallback
