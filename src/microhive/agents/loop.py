"""The agent loop: model and tools in turn until there is an answer or a reason to stop.

One call of :func:`run_agent` is one sub-task of one worker. The loop is small on
purpose; everything a worker needs around it (where the tools come from, which
model, what to do with the answer) is passed in.

It always ends with an :class:`AgentResult` whose ``stop`` says why:

=================  ==============================================================
``final_answer``   the model answered without asking for tools
``max_steps``      the model was called ``max_steps`` times without a final answer
``repeated_call``  the same tool was asked for with the same arguments too often
``deadline``       the call context's deadline passed
``budget``         the step or token budget in the call context ran out
``hop_limit``      the call context has no hops left
=================  ==============================================================

Tool failures do not stop the loop: the error goes back to the model as a tool
result marked as an error, and the model decides what to do next. A call that
cannot run -- no such tool, arguments that are not JSON or do not match the
tool's schema (:mod:`microhive.agents.arguments`) -- never reaches the tool: the
model is told exactly what was wrong and tries again within its step budget; the
record of such a call has ``rejected=True``.

Tracing: each model call is a ``chat {model}`` span and each tool call an
``execute_tool {tool}`` span (tool name, call id; arguments and results only
with ``tracing.capture_content``), children of the current span -- the caller
wraps the loop in :func:`microhive.tracing.agent_span` (the worker does). A stop
other than ``final_answer`` is recorded on that span as its event
(``loop_stopped``, ``deadline_exceeded``, ``budget_exhausted``) with ERROR status.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from microhive.agents.arguments import ArgumentChecker
from microhive.context import CallContext
from microhive.errors import (
    BudgetExhausted,
    DeadlineExceeded,
    HopLimitExceeded,
    MicrohiveError,
)
from microhive.models.base import ModelProvider, join_trace
from microhive.models.types import (
    ChatHooks,
    Message,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    Usage,
    UserMessage,
)
from microhive.tracing import (
    EVENT_BUDGET_EXHAUSTED,
    EVENT_DEADLINE_EXCEEDED,
    EVENT_LOOP_STOPPED,
    CallMetrics,
    TracedSpan,
    tool_span,
)

__all__ = [
    "MAX_NUDGES",
    "AgentResult",
    "StopReason",
    "ToolOutcome",
    "ToolRecord",
    "Toolbox",
    "run_agent",
    "with_span_trace",
]


#: How often a model that answered with its work not done is told so and goes on.
MAX_NUDGES = 2


class StopReason(StrEnum):
    FINAL_ANSWER = "final_answer"
    MAX_STEPS = "max_steps"
    REPEATED_CALL = "repeated_call"
    DEADLINE = "deadline"
    BUDGET = "budget"
    HOP_LIMIT = "hop_limit"


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool returned: text for the model, optional structured data, error flag."""

    text: str
    is_error: bool = False
    data: Any = None


class Toolbox(Protocol):
    """Where an agent's tools come from (the gateway over MCP, or local functions)."""

    async def list_tools(self) -> list[ToolSpec]: ...

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, context: CallContext
    ) -> ToolOutcome: ...


@dataclass(frozen=True, slots=True)
class ToolRecord:
    name: str
    arguments: dict[str, Any]
    is_error: bool
    text: str
    data: Any = None
    #: The call was refused before it reached the tool (unknown tool, bad arguments).
    rejected: bool = False


@dataclass(frozen=True, slots=True)
class AgentResult:
    text: str
    stop: StopReason
    detail: str = ""
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[ToolRecord, ...] = ()
    offline: bool = False
    context: CallContext | None = None

    @property
    def ok(self) -> bool:
        return self.stop is StopReason.FINAL_ANSWER

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "stop": self.stop.value,
            "detail": self.detail,
            "steps": self.steps,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            },
            "tool_calls": [
                {
                    "name": r.name,
                    "arguments": r.arguments,
                    "is_error": r.is_error,
                    **({"rejected": True} if r.rejected else {}),
                }
                for r in self.tool_calls
            ],
            "offline": self.offline,
        }


ToolSelector = Callable[[str, Sequence[ToolSpec], int], Awaitable[Sequence[ToolSpec]]]


_STOP_EVENTS = {
    "deadline": EVENT_DEADLINE_EXCEEDED,
    "budget": EVENT_BUDGET_EXHAUSTED,
    "hop_limit": EVENT_LOOP_STOPPED,
    "max_steps": EVENT_LOOP_STOPPED,
    "repeated_call": EVENT_LOOP_STOPPED,
}


def with_span_trace(ctx: CallContext, span: TracedSpan) -> CallContext:
    """``ctx`` carrying ``span`` as its trace parent (unchanged if the span is not recorded).

    A :class:`CallContext` is immutable and remembers the trace it was made in;
    work that activates it (a toolbox, the bus) must see the span opened since.
    """
    if not span.span.is_recording():
        return ctx
    carrier: dict[str, str] = {}
    span.inject(carrier)
    return replace(ctx, trace=carrier) if carrier else ctx


def _record_stop(result: AgentResult) -> None:
    """A stop other than a final answer: the current (agent) span's event, ERROR status."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("microhive.agent.stop", result.stop.value)
    span.set_attribute("microhive.agent.steps", result.steps)
    event = _STOP_EVENTS.get(result.stop.value)
    if event is None:
        return
    reason = result.detail or result.stop.value
    span.add_event(event, {"microhive.reason": reason, "microhive.agent.stop": result.stop.value})
    span.set_attribute("error.type", result.stop.value)
    span.set_status(Status(StatusCode.ERROR, f"{event}: {reason}"))


def _call_key(call: ToolCall) -> str:
    return call.name + "\x00" + json.dumps(dict(call.arguments), sort_keys=True, default=str)


async def run_agent(
    model: ModelProvider,
    messages: Sequence[Message],
    *,
    toolbox: Toolbox | None = None,
    context: CallContext | None = None,
    max_steps: int = 8,
    repeat_limit: int = 2,
    top_k: int | None = None,
    select_tools: ToolSelector | None = None,
    always_offer: Sequence[str] = (),
    task_text: str = "",
    on_tool_call: Callable[[ToolRecord], Awaitable[None]] | None = None,
    metrics: CallMetrics | None = None,
    hooks: ChatHooks | None = None,
    check_done: Callable[[], Awaitable[str | None]] | None = None,
) -> AgentResult:
    """Run the loop. ``repeat_limit``: how often one exact call may be made before stopping.

    When ``top_k`` is set and the toolbox offers more tools, ``select_tools``
    (tool retrieval) picks the ``top_k`` that fit ``task_text``; the tools named in
    ``always_offer`` are offered on top of them (the worker names the write tool
    a task needs for its declared outputs). ``metrics``
    records each tool call's latency and outcome on a service's ``/metrics``;
    ``hooks`` hears the model's streamed text and its retries. ``check_done``,
    asked when the model answers, says what is still missing (``None``: done);
    the model is told and goes on, at most :data:`MAX_NUDGES` times and within
    ``max_steps`` (the worker uses it for declared outputs not yet written).
    """
    ctx = context or CallContext.current()
    # Spans go under the current span if it is in ctx's trace, else under ctx's parent.
    token = join_trace(ctx)
    try:
        result = await _loop(
            model,
            messages,
            toolbox=toolbox,
            ctx=ctx,
            max_steps=max_steps,
            repeat_limit=repeat_limit,
            top_k=top_k,
            select_tools=select_tools,
            always_offer=always_offer,
            task_text=task_text,
            on_tool_call=on_tool_call,
            metrics=metrics,
            hooks=hooks,
            check_done=check_done,
        )
    finally:
        if token is not None:
            otel_context.detach(token)
    _record_stop(result)
    return result


async def _loop(
    model: ModelProvider,
    messages: Sequence[Message],
    *,
    toolbox: Toolbox | None,
    ctx: CallContext,
    max_steps: int,
    repeat_limit: int,
    top_k: int | None,
    select_tools: ToolSelector | None,
    always_offer: Sequence[str],
    task_text: str,
    on_tool_call: Callable[[ToolRecord], Awaitable[None]] | None,
    metrics: CallMetrics | None,
    hooks: ChatHooks | None,
    check_done: Callable[[], Awaitable[str | None]] | None,
) -> AgentResult:
    history: list[Message] = list(messages)
    usage = Usage()
    records: list[ToolRecord] = []
    seen: Counter[str] = Counter()
    offline = False
    every: Sequence[ToolSpec] = await toolbox.list_tools() if toolbox is not None else ()
    tools = every
    if top_k is not None and len(every) > top_k:
        if select_tools is not None:
            tools = await select_tools(task_text, every, top_k)
        else:
            tools = every[:top_k]
        chosen = {t.name for t in tools}
        tools = [*tools, *(t for t in every if t.name in always_offer and t.name not in chosen)]
    checker = ArgumentChecker(tools)

    def finish(stop: StopReason, text: str = "", detail: str = "", step: int = 0) -> AgentResult:
        return AgentResult(
            text=text,
            stop=stop,
            detail=detail,
            steps=step,
            usage=usage,
            tool_calls=tuple(records),
            offline=offline,
            context=ctx,
        )

    last_text = ""
    nudges = 0
    for step in range(1, max_steps + 1):
        try:
            ctx.check()
            ctx = ctx.spend(steps=1)
            result = await model.chat(history, tools=tools or None, context=ctx, hooks=hooks)
        except DeadlineExceeded as exc:
            return finish(StopReason.DEADLINE, last_text, exc.message, step - 1)
        except BudgetExhausted as exc:
            return finish(StopReason.BUDGET, last_text, exc.message, step - 1)
        except HopLimitExceeded as exc:
            return finish(StopReason.HOP_LIMIT, last_text, exc.message, step - 1)
        usage = usage + result.usage
        offline = offline or result.offline
        last_text = result.text or last_text
        try:
            ctx = result.charge(ctx)
        except BudgetExhausted as exc:
            return finish(StopReason.BUDGET, last_text, exc.message, step)
        if not result.tool_calls:
            unfinished = await check_done() if check_done is not None else None
            if unfinished and nudges < MAX_NUDGES and step < max_steps:
                # An answer with the work not done: say what is missing, once or twice.
                nudges += 1
                history += [result.message(), UserMessage(unfinished)]
                continue
            return finish(StopReason.FINAL_ANSWER, result.text, "", step)
        result = replace(result, tool_calls=tuple(checker.clean(c) for c in result.tool_calls))
        history.append(result.message())
        for call in result.tool_calls:
            seen[_call_key(call)] += 1
            if seen[_call_key(call)] > repeat_limit:
                detail = (
                    f"tool {call.name!r} was called {seen[_call_key(call)]} times "
                    "with the same arguments"
                )
                return finish(StopReason.REPEATED_CALL, last_text, detail, step)
        refused = {i: checker.problems(call) for i, call in enumerate(result.tool_calls)}
        outcomes = await asyncio.gather(
            *(
                _refuse(call, refused[i], metrics)
                if refused[i]
                else _call(toolbox, call, ctx, metrics)
                for i, call in enumerate(result.tool_calls)
            )
        )
        for i, (call, outcome) in enumerate(zip(result.tool_calls, outcomes, strict=True)):
            record = ToolRecord(
                call.name,
                dict(call.arguments),
                outcome.is_error,
                outcome.text,
                outcome.data,
                rejected=bool(refused[i]),
            )
            records.append(record)
            if on_tool_call is not None:
                await on_tool_call(record)
            history.append(
                ToolResultMessage(
                    tool_call_id=call.id,
                    content=outcome.text,
                    name=call.name,
                    is_error=outcome.is_error,
                )
            )
    return finish(
        StopReason.MAX_STEPS, last_text, f"no final answer after {max_steps} model calls", max_steps
    )


async def _refuse(call: ToolCall, problems: list[str], metrics: CallMetrics | None) -> ToolOutcome:
    """The answer to a call that cannot run: what was wrong, for the model to fix."""
    if metrics is not None:
        metrics.tool_calls.labels(call.name, "invalid_call").observe(0.0)
    return ToolOutcome(
        f"The call of {call.name!r} was not run: {'; '.join(problems)}. "
        "Fix it and call the tool again, or answer without it.",
        True,
    )


async def _call(
    toolbox: Toolbox | None, call: ToolCall, ctx: CallContext, metrics: CallMetrics | None
) -> ToolOutcome:
    started = time.perf_counter()
    outcome = "ok"
    with tool_span(call.name, call.id or None, arguments=call.arguments, ctx=ctx) as span:
        try:
            if toolbox is None:
                result = ToolOutcome(
                    f"no tools are available; {call.name!r} cannot be called", True
                )
            else:
                try:
                    result = await toolbox.call_tool(
                        call.name, dict(call.arguments), context=with_span_trace(ctx, span)
                    )
                except MicrohiveError as exc:
                    outcome = exc.code
                    span.fail(exc)
                    return ToolOutcome(f"{call.name} failed: {exc.message}", True)
            if result.is_error:
                outcome = "tool_error"
                # The error text may quote arguments: it is content, recorded only if opted in.
                span.tool_error(
                    result.text[:500] if span.capture_content else "the tool answered with an error"
                )
            elif span.capture_content:
                span.tool_result(result.text)
            return result
        except BaseException:
            outcome = "error"
            raise
        finally:
            if metrics is not None:
                metrics.tool_calls.labels(call.name, outcome).observe(time.perf_counter() - started)
