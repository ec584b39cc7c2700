"""OpenAI-compatible chat completions, through the official ``openai`` SDK.

One provider covers every server that speaks ``POST {base_url}/chat/completions``:
OpenAI itself, vLLM, Ollama, LM Studio, llama.cpp's server, LiteLLM and others.
Tools are sent as ``function`` tools, tool calls come back with JSON-string
arguments (decoded here), and usage is ``prompt_tokens`` / ``completion_tokens``.

The SDK's own retries default to 2; the mesh's retry policy and the call
context's deadline bound them (the deadline cancels the call).
"""

from __future__ import annotations

import json
from typing import Any, cast

import openai

from microhive.errors import InvalidInput
from microhive.models._wire import ToolNames, connection_error, convert_status, timeout_error
from microhive.models.base import ModelProvider
from microhive.models.types import (
    AssistantMessage,
    ChatRequest,
    ChatResult,
    FinishReason,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    Usage,
    parse_arguments,
)

__all__ = ["OpenAIModel"]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "length",
    "content_filter": "content_filter",
}
_OFFICIAL = "https://api.openai.com"


class OpenAIModel(ModelProvider):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    provider = "openai"

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        key_env: str | None = None,
    ) -> None:
        super().__init__(model, temperature=temperature, max_tokens=max_tokens)
        self.base_url = base_url or f"{_OFFICIAL}/v1"
        self._key_env = key_env
        # OpenAI's newer models refuse `max_tokens`; compatible servers mostly only know it.
        self._limit_field = (
            "max_completion_tokens" if self.base_url.startswith(_OFFICIAL) else "max_tokens"
        )
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=max_retries
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def _chat(self, request: ChatRequest) -> ChatResult:
        names = ToolNames(request.tools)
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [_message(m, names) for m in request.messages],
        }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": names.wire(t.name),
                        "description": t.description,
                        "parameters": dict(t.parameters),
                    },
                }
                for t in request.tools
            ]
        if request.max_tokens is not None:
            params[self._limit_field] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        try:
            completion = await self._client.chat.completions.create(**params)
        except openai.APITimeoutError as exc:
            raise timeout_error(self.provider, request.model) from exc
        except openai.APIConnectionError as exc:
            raise connection_error(self.provider, self.base_url, str(exc)) from exc
        except openai.APIStatusError as exc:
            raise convert_status(
                self.provider, exc.status_code, _detail(exc.body, exc.message), self._key_env
            ) from exc
        except openai.APIError as exc:
            raise convert_status(self.provider, 502, str(exc), self._key_env) from exc
        if not completion.choices:
            raise convert_status(self.provider, 502, "the answer had no choices", None)
        choice = completion.choices[0]
        calls: list[ToolCall] = []
        for call in choice.message.tool_calls or ():
            function = getattr(call, "function", None)
            if function is None:  # a "custom" (free-text) tool call; we never offer those
                continue
            name = names.original(function.name)
            try:
                arguments = parse_arguments(function.arguments or "", name)
            except InvalidInput as exc:
                arguments = {"_invalid_json": function.arguments, "_error": exc.message}
            calls.append(ToolCall(id=call.id, name=name, arguments=arguments))
        usage = completion.usage
        reason = _FINISH.get(str(choice.finish_reason), "other")
        if calls and reason == "stop":
            reason = "tool_calls"  # some compatible servers say "stop" with tool calls
        return ChatResult(
            text=choice.message.content or "",
            tool_calls=tuple(calls),
            finish_reason=reason,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            provider=self.provider,
            model=completion.model or request.model,
            offline=False,
        )


def _message(m: Any, names: ToolNames) -> dict[str, Any]:
    if isinstance(m, SystemMessage):
        return {"role": "system", "content": m.content}
    if isinstance(m, AssistantMessage):
        out: dict[str, Any] = {"role": "assistant", "content": m.content or None}
        if m.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": names.wire(c.name),
                        "arguments": json.dumps(dict(c.arguments)),
                    },
                }
                for c in m.tool_calls
            ]
        return out
    if isinstance(m, ToolResultMessage):
        content = f"ERROR: {m.content}" if m.is_error else m.content
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": content}
    return {"role": "user", "content": cast(str, m.content)}


def _detail(body: object, fallback: str) -> str:
    """The API's own error message, from ``{"error": {"message": ...}}`` when present."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return fallback
