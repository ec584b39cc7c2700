"""The one interface every model provider implements.

:meth:`ModelProvider.chat` is the public entry point and does what every
provider needs the same way: validate the messages and tools, refuse work whose
deadline has passed or whose token budget is spent, bound the call by the
deadline, and record an OpenTelemetry span (``chat <model>``, the GenAI
conventions of :func:`microhive.tracing.chat_span`) with the usage -- prompts and
output only when the mesh opts in to ``tracing.capture_content`` -- and, when the
owning service set :attr:`ModelProvider.call_metrics`, the call's latency.
A provider only implements :meth:`ModelProvider._chat` (one call, converting its
SDK's exceptions to ours) and, when it owns connections, :meth:`aclose`.

The provider never spends the budget itself: a :class:`CallContext` is
immutable, so the caller does ``ctx = result.charge(ctx)`` after each call.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from contextvars import Token
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from microhive.context import CallContext
from microhive.errors import BudgetExhausted, DeadlineExceeded, InvalidInput, MicrohiveError
from microhive.models.types import (
    ChatRequest,
    ChatResult,
    Message,
    SystemMessage,
    ToolSpec,
    message_to_dict,
    validate_messages,
)
from microhive.tracing import CallMetrics, chat_span

__all__ = ["ModelProvider", "join_trace"]


def join_trace(ctx: CallContext) -> Token[Context] | None:
    """Attach ``ctx``'s trace as the current OTel context when the current span is not in it.

    Returns the token to detach, or ``None`` when the current span already belongs
    to ``ctx``'s trace (the usual case: the caller's span is current and more
    precise than the hop's remote parent). A call handed a context from
    elsewhere -- no span current, or another trace's -- is thus recorded in the
    context's trace, never as a root of its own.
    """
    traceparent = ctx.trace.get("traceparent")
    if traceparent is None:
        return None
    current = trace.get_current_span().get_span_context()
    if current.is_valid and traceparent[3:35] == format(current.trace_id, "032x"):
        return None
    return otel_context.attach(ctx.otel_context())


class ModelProvider(abc.ABC):
    """A chat model with tool calling. Use as ``async with`` or call :meth:`aclose`."""

    #: Registry name, e.g. ``openai``; shown on results and spans.
    provider: ClassVar[str] = ""
    #: True for providers that are not a real language model (offline, scripted).
    offline: ClassVar[bool] = False
    #: Where the owning service's ``/metrics`` records model-call latency (``None``: nowhere).
    call_metrics: CallMetrics | None = None

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
        token = join_trace(ctx)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._traced_chat(request, remaining)
        except BaseException as exc:
            outcome = exc.code if isinstance(exc, MicrohiveError) else "error"
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
            if self.call_metrics is not None:
                self.call_metrics.model_calls.labels(self.provider, request.model, outcome).observe(
                    time.perf_counter() - started
                )

    async def _traced_chat(self, request: ChatRequest, remaining: float | None) -> ChatResult:
        # Content is built only when it will be recorded: no per-call JSON otherwise.
        capture = bool(getattr(trace.get_tracer_provider(), "capture_content", False))
        inputs: list[dict[str, Any]] | None = None
        system: str | None = None
        if capture:
            inputs = [
                message_to_dict(m) for m in request.messages if not isinstance(m, SystemMessage)
            ]
            system = request.system or None
        with chat_span(
            self.provider,
            request.model,
            input_messages=inputs,
            system_instructions=system,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            ctx=request.context,
        ) as span:
            if span.span.is_recording():
                span.set("microhive.model.offline", self.offline)
                span.set("microhive.model.tools", len(request.tools))
            with anyio.move_on_after(remaining if remaining is not None else float("inf")) as scope:
                result = await self._chat(request)
            if scope.cancelled_caught:
                raise DeadlineExceeded(
                    f"deadline reached while waiting for {self.provider} model {request.model!r}"
                )
            span.usage(
                input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens
            )
            span.response(model=result.model or None, finish_reasons=[result.finish_reason])
            if span.capture_content:
                span.output_messages([message_to_dict(result.message())])
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
