"""The one interface every model provider implements.

:meth:`ModelProvider.chat` is the public entry point and does what every
provider needs the same way: validate the messages and tools, refuse work whose
deadline has passed or whose token budget is spent, bound the call by the
deadline, and record an OpenTelemetry span (``chat <model>``) with the usage.
A provider only implements :meth:`ModelProvider._chat` (one call, converting its
SDK's exceptions to ours) and, when it owns connections, :meth:`aclose`.

The provider never spends the budget itself: a :class:`CallContext` is
immutable, so the caller does ``ctx = result.charge(ctx)`` after each call.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
from opentelemetry import trace

from microhive.context import CallContext
from microhive.errors import BudgetExhausted, DeadlineExceeded, InvalidInput
from microhive.models.types import (
    ChatRequest,
    ChatResult,
    Message,
    ToolSpec,
    validate_messages,
)

__all__ = ["ModelProvider"]

_tracer = trace.get_tracer("microhive.models")


class ModelProvider(abc.ABC):
    """A chat model with tool calling. Use as ``async with`` or call :meth:`aclose`."""

    #: Registry name, e.g. ``openai``; shown on results and spans.
    provider: ClassVar[str] = ""
    #: True for providers that are not a real language model (offline, scripted).
    offline: ClassVar[bool] = False

    def __init__(
        self,
        model: str,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        context: CallContext | None = None,
    ) -> ChatResult:
        """Send a conversation (and the tools on offer); return the model's answer.

        Raises :class:`DeadlineExceeded` if ``context``'s deadline has passed (or
        passes during the call), :class:`BudgetExhausted` if its token budget is
        spent, and the provider's errors converted to microhive's.
        """
        msgs = validate_messages(messages)
        specs = tuple(tools or ())
        for i, t in enumerate(specs):
            if not isinstance(t, ToolSpec):
                raise InvalidInput(f"tools[{i}]: expected a ToolSpec, got {type(t).__name__}")
        names = [t.name for t in specs]
        if len(set(names)) != len(names):
            raise InvalidInput(f"tool names must be unique, got {names}")
        ctx = context if context is not None else CallContext.current()
        remaining = ctx.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"deadline passed {-remaining:.3f}s ago; model not called")
        limit = max_tokens if max_tokens is not None else self.max_tokens
        if ctx.budget_tokens is not None:
            if ctx.budget_tokens <= 0:
                raise BudgetExhausted("token budget exhausted; model not called")
            limit = min(limit, ctx.budget_tokens) if limit is not None else ctx.budget_tokens
        request = ChatRequest(
            messages=msgs,
            tools=specs,
            model=model or self.model,
            max_tokens=limit,
            temperature=temperature if temperature is not None else self.temperature,
            timeout=remaining,
            context=ctx,
        )
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": request.model,
            "microhive.model.offline": self.offline,
            "microhive.model.tools": len(specs),
        }
        with _tracer.start_as_current_span(
            f"chat {request.model}", context=ctx.otel_context(), attributes=attrs
        ) as span:
            with anyio.move_on_after(remaining if remaining is not None else float("inf")) as scope:
                result = await self._chat(request)
            if scope.cancelled_caught:
                raise DeadlineExceeded(
                    f"deadline reached while waiting for {self.provider} model {request.model!r}"
                )
            span.set_attribute("gen_ai.usage.input_tokens", result.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", result.usage.output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
        return result

    @abc.abstractmethod
    async def _chat(self, request: ChatRequest) -> ChatResult:
        """Make one call. Convert SDK exceptions to microhive errors here."""

    async def aclose(self) -> None:  # noqa: B027 - a no-op default, not abstract
        """Release connections (nothing to do for in-process providers)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
