"""The one interface every model provider implements.

:meth:`ModelProvider.chat` is the public entry point and does what every
provider needs the same way: validate the messages and tools, refuse work whose
deadline has passed or whose token budget is spent, bound the call by the
deadline, and record an OpenTelemetry span (``chat <model>``, the GenAI
conventions of :func:`microhive.tracing.chat_span`) with the usage -- prompts and
output only when the mesh opts in to ``tracing.capture_content`` -- and, when the
owning service set :attr:`ModelProvider.call_metrics`, the call's latency.
A provider only implements :meth:`ModelProvider._chat` (one attempt, converting
its SDK's exceptions to ours, within ``request.timeout`` seconds) and, when it
owns connections, :meth:`aclose`. Retries, tool calls written as text and the
context limit are handled here, the same way for every provider.

The provider never spends the budget itself: a :class:`CallContext` is
immutable, so the caller does ``ctx = result.charge(ctx)`` after each call.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from contextvars import Token
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

import anyio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from microhive.context import CallContext
from microhive.errors import (
    BudgetExhausted,
    DeadlineExceeded,
    InvalidInput,
    MicrohiveError,
    ServiceUnavailable,
    TimeoutFailure,
    UpstreamError,
)
from microhive.models.toolcalls import content_mode_prompt, recover_tool_calls
from microhive.models.types import (
    ChatHooks,
    ChatRequest,
    ChatResult,
    Message,
    ResponseSchema,
    SystemMessage,
    ToolSpec,
    count_tokens,
    message_to_dict,
    validate_messages,
)
from microhive.tracing import CallMetrics, TracedSpan, chat_span

__all__ = ["EVENT_MODEL_RETRY", "ModelProvider", "ToolCallMode", "essential", "join_trace"]

#: How a model's tool calls arrive (see :mod:`microhive.models.toolcalls`).
ToolCallMode = Literal["auto", "native", "content"]
#: The span event recorded on a model call for each retry.
EVENT_MODEL_RETRY = "model_retry"
# Failures that pass: the same call may well work a moment later.
_PASSING = (UpstreamError, TimeoutFailure, ServiceUnavailable)
_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 30.0


def essential(tool: ToolSpec) -> ToolSpec:
    """``tool`` without the optional arguments that have a default.

    What a small model is shown: it tends to fill every field of a schema, and a
    guessed ``workspace`` or ``expected_version`` breaks a call that the tool's
    defaults would have done right. Calls are still checked against the full schema.
    """
    props = tool.parameters.get("properties")
    if not isinstance(props, dict):
        return tool
    required = tool.parameters.get("required") or []
    kept = {
        name: schema
        for name, schema in props.items()
        if name in required or not (isinstance(schema, dict) and "default" in schema)
    }
    if len(kept) == len(props):
        return tool
    return ToolSpec(tool.name, tool.description, {**tool.parameters, "properties": kept})


def _with_tool_prompt(messages: tuple[Message, ...], prompt: str) -> tuple[Message, ...]:
    """``messages`` with ``prompt`` added to the (first) system message, or as one."""
    for i, m in enumerate(messages):
        if isinstance(m, SystemMessage):
            return (*messages[:i], SystemMessage(f"{m.content}\n\n{prompt}"), *messages[i + 1 :])
    return (SystemMessage(prompt), *messages)


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
    """A chat model with tool calling. Use as ``async with`` or call :meth:`aclose`.

    Settings every provider shares (a mesh file's model entry sets them):
    ``timeout`` (seconds one attempt may take), ``retries`` (further attempts after
    a passing failure: rate limit, 5xx, timeout, nothing listening; each is a
    ``model_retry`` span event and a hook call, with backoff inside the deadline),
    ``tool_calls`` (``auto``/``native``/``content``: how the model's tool calls
    arrive, see :mod:`microhive.models.toolcalls`), ``stream`` (stream text to the
    hooks' ``on_text`` where the provider can), ``context_size`` (the output
    limit is cut to what fits beside the prompt) and ``essential_arguments``
    (tools are shown without their optional arguments that have a default).
    """

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
        timeout: float | None = None,
        retries: int = 0,
        tool_calls: ToolCallMode = "auto",
        stream: bool = False,
        context_size: int | None = None,
        essential_arguments: bool = False,
    ) -> None:
        if tool_calls not in ("auto", "native", "content"):
            raise InvalidInput(f"tool_calls must be auto, native or content, got {tool_calls!r}")
        if retries < 0:
            raise InvalidInput(f"retries must be 0 or more, got {retries}")
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retries = retries
        self.tool_calls = tool_calls
        self.stream = stream
        self.context_size = context_size
        self.essential_arguments = essential_arguments

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        context: CallContext | None = None,
        response_schema: ResponseSchema | None = None,
        hooks: ChatHooks | None = None,
    ) -> ChatResult:
        """Send a conversation (and the tools on offer); return the model's answer.

        With ``response_schema`` the answer's text is one JSON value the provider
        was asked to make match the schema (structured output); it is still
        validated by the caller. ``hooks`` hears streamed text and retries.

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
        offered = specs
        if self.essential_arguments:
            specs = tuple(essential(t) for t in specs)
        if specs and self.tool_calls == "content" and response_schema is None:
            # Tools go into the prompt, not the API: the model writes its calls as text.
            msgs = _with_tool_prompt(msgs, content_mode_prompt(specs))
            specs = ()
        request = ChatRequest(
            messages=msgs,
            tools=specs,
            model=model or self.model,
            max_tokens=limit,
            temperature=temperature if temperature is not None else self.temperature,
            timeout=remaining,
            context=ctx,
            response_schema=response_schema,
            hooks=hooks,
        )
        request = self._fit_context(request)
        token = join_trace(ctx)
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await self._traced_chat(request, remaining)
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
        recover = offered and response_schema is None and self.tool_calls != "native"
        if recover and not result.tool_calls:
            calls, rest = recover_tool_calls(result.text, offered)
            if calls:
                result = replace(
                    result, text=rest, tool_calls=tuple(calls), finish_reason="tool_calls"
                )
        return result

    def _fit_context(self, request: ChatRequest) -> ChatRequest:
        """Cut the output limit to what fits beside the prompt in ``context_size``.

        The prompt's size is estimated (words and marks, times 1.3 for a real
        tokenizer); a prompt that leaves no room is refused before the call.
        """
        if self.context_size is None:
            return request
        prompt = int(count_tokens(request.input_text()) * 1.3) + 8 * len(request.messages)
        room = self.context_size - prompt
        if room < 16:
            raise InvalidInput(
                f"the conversation is about {prompt} tokens, which leaves no room to answer "
                f"in the model's context of {self.context_size} tokens (context_size)"
            )
        if request.max_tokens is None or request.max_tokens > room:
            return replace(request, max_tokens=room)
        return request

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
                if request.response_schema is not None:
                    span.set("microhive.model.response_schema", request.response_schema.name)
            deadline = None if remaining is None else time.monotonic() + remaining
            result = await self._attempts(request, deadline, span)
            span.usage(
                input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens
            )
            span.response(model=result.model or None, finish_reasons=[result.finish_reason])
            if span.capture_content:
                span.output_messages([message_to_dict(result.message())])
        return result

    async def _attempts(
        self, request: ChatRequest, deadline: float | None, span: TracedSpan
    ) -> ChatResult:
        """One call, tried again ``retries`` times after a passing failure, within the deadline."""
        attempt = 1
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DeadlineExceeded(
                    f"deadline reached while waiting for {self.provider} model {request.model!r}"
                )
            budget = min(x for x in (left, self.timeout, float("inf")) if x is not None)
            try:
                with anyio.fail_after(budget if budget != float("inf") else None):
                    return await self._chat(replace(request, timeout=budget))
            except TimeoutError:
                if self.timeout is not None and budget >= self.timeout:
                    error: MicrohiveError = TimeoutFailure(
                        f"{self.provider} model {request.model!r} did not answer within "
                        f"{self.timeout:g} s (the model's timeout)"
                    )
                else:
                    raise DeadlineExceeded(
                        f"deadline reached while waiting for {self.provider} model "
                        f"{request.model!r}"
                    ) from None
            except _PASSING as exc:
                error = exc
            if attempt > self.retries:
                if attempt > 1:
                    raise type(error)(f"{error.message} (after {attempt} attempts)") from error
                raise error
            delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1))
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= delay:
                raise error
            attempt += 1
            span.span.add_event(
                EVENT_MODEL_RETRY,
                {
                    "microhive.attempt": attempt,
                    "microhive.reason": error.message[:500],
                    "microhive.delay_s": delay,
                },
            )
            if request.hooks is not None and request.hooks.on_retry is not None:
                await request.hooks.on_retry(attempt, error.message, delay)
            await anyio.sleep(delay)

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
