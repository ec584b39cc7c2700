"""OpenAI-compatible chat completions, through the official ``openai`` SDK.

One provider covers every server that speaks ``POST {base_url}/chat/completions``:
OpenAI itself, vLLM, Ollama, LM Studio, llama.cpp's server, LiteLLM and others.
Tools are sent as ``function`` tools, tool calls come back with JSON-string
arguments (decoded here), and usage is ``prompt_tokens`` / ``completion_tokens``.

Retries are the base class's (visible on the trace), so the SDK's own are off;
each attempt has the model's ``timeout``. Structured output goes as
``response_format: {"type": "json_schema", ...}`` (llama.cpp and vLLM turn it
into a grammar). With ``stream`` on and an ``on_text`` hook, the answer is
streamed: text pieces go to the hook as they arrive, tool-call pieces are joined
by their index, and the usage comes on the last chunk.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

import openai

from microhive.errors import InvalidInput
from microhive.models._wire import ToolNames, connection_error, convert_status, timeout_error
from microhive.models.base import ModelProvider, ToolCallMode
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
        retries: int = 2,
        key_env: str | None = None,
        tool_calls: ToolCallMode = "auto",
        stream: bool = False,
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
            stream=stream,
            context_size=context_size,
            essential_arguments=essential_arguments,
        )
        self.base_url = base_url or f"{_OFFICIAL}/v1"
        self._key_env = key_env
        # OpenAI's newer models refuse `max_tokens`; compatible servers mostly only know it.
        self._limit_field = (
            "max_completion_tokens" if self.base_url.startswith(_OFFICIAL) else "max_tokens"
        )
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=0
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
        wanted = request.response_schema
        if wanted is not None:
            # Local servers (llama.cpp, vLLM) enforce the full schema as a grammar.
            # OpenAI's strict mode refuses what our tight schemas use (a root anyOf,
            # prefixItems, maxLength), so there the plain form guides and the
            # validation after the call decides.
            official = self.base_url.startswith(_OFFICIAL)
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": wanted.name,
                    "description": wanted.description,
                    "schema": dict(wanted.plain() if official else wanted.schema),
                    "strict": not official,
                },
            }
        on_text = request.hooks.on_text if request.hooks is not None else None
        if request.timeout is not None:
            params["timeout"] = request.timeout + 1.0  # the base class's clock ends it first
        try:
            if self.stream and on_text is not None:
                return await self._streamed(request, params, names, on_text)
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
            calls.append(_tool_call(call.id, function.name, function.arguments, names))
        usage = completion.usage
        return self._result(
            request,
            choice.message.content or "",
            calls,
            str(choice.finish_reason),
            Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            completion.model,
        )

    async def _streamed(
        self,
        request: ChatRequest,
        params: dict[str, Any],
        names: ToolNames,
        on_text: Callable[[str], Awaitable[None]],
    ) -> ChatResult:
        """The same call, streamed: text to ``on_text`` as it comes, the rest joined."""
        text: list[str] = []
        parts: dict[int, dict[str, Any]] = {}
        finish = "stop"
        usage = Usage()
        model = ""
        stream = await self._client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
        async with stream:
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finish = str(choice.finish_reason)
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        await on_text(delta.content)
                    for piece in delta.tool_calls or ():
                        part = parts.setdefault(piece.index, {"id": "", "name": "", "args": []})
                        part["id"] = piece.id or part["id"]
                        if piece.function is not None:
                            part["name"] += piece.function.name or ""
                            part["args"].append(piece.function.arguments or "")
        calls = [
            _tool_call(p["id"] or f"call_{i}", p["name"], "".join(p["args"]), names)
            for i, p in sorted(parts.items())
        ]
        return self._result(request, "".join(text), calls, finish, usage, model)

    def _result(
        self,
        request: ChatRequest,
        text: str,
        calls: list[ToolCall],
        finish: str,
        usage: Usage,
        model: str | None,
    ) -> ChatResult:
        reason = _FINISH.get(finish, "other")
        if calls and reason == "stop":
            reason = "tool_calls"  # some compatible servers say "stop" with tool calls
        return ChatResult(
            text=text,
            tool_calls=tuple(calls),
            finish_reason=reason,
            usage=usage,
            provider=self.provider,
            model=model or request.model,
            offline=False,
        )


def _tool_call(call_id: str, wire_name: str, raw: str | None, names: ToolNames) -> ToolCall:
    """A tool call from the API's pieces; arguments that do not decode give ``error``."""
    name = names.original(wire_name)
    try:
        return ToolCall(id=call_id, name=name, arguments=parse_arguments(raw or "", name))
    except InvalidInput as exc:
        return ToolCall(id=call_id, name=name, error=exc.message)


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
