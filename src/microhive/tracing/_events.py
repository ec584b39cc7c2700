"""What happened to a span: call-context attributes, errors and the stop events.

microhive stops work on purpose in a few ways -- a loop runs out of hops, a
deadline passes, a budget is spent, a circuit breaker opens -- and each is a
span event of its own name with ERROR status and a description a person can
read, so the trace viewer can say *why* a run stopped, not only that it did.
These functions act on the current span unless given one (an OpenTelemetry
span or the :class:`~microhive.tracing.TracedSpan` a span helper yields).
"""

from __future__ import annotations

from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from microhive.context import CallContext
from microhive.errors import (
    BudgetExhausted,
    Cancelled,
    DeadlineExceeded,
    HopLimitExceeded,
    MicrohiveError,
)
from microhive.tracing._sqlite import RUN_ID_ATTRIBUTE

__all__ = [
    "EVENT_BREAKER_OPENED",
    "EVENT_BUDGET_EXHAUSTED",
    "EVENT_CANCELLED",
    "EVENT_DEADLINE_EXCEEDED",
    "EVENT_LOOP_STOPPED",
    "EVENT_MODEL_RETRY",
    "EVENT_OUTPUT_MISSING",
    "EVENT_PLAN_REFUSED",
    "breaker_opened",
    "context_attributes",
    "current_ids",
    "deadline_exceeded",
    "loop_stopped",
    "record_call_context",
    "record_error",
    "set_run_id",
]


class _Wrapper(Protocol):
    @property
    def span(self) -> Span: ...


SpanRef = Span | _Wrapper | None

#: Span event names for the ways microhive stops work on purpose.
EVENT_LOOP_STOPPED = "loop_stopped"
EVENT_DEADLINE_EXCEEDED = "deadline_exceeded"
EVENT_BUDGET_EXHAUSTED = "budget_exhausted"
EVENT_BREAKER_OPENED = "breaker_opened"
EVENT_CANCELLED = "cancelled"

#: Span events on the way that a user needs to see (work went on), each with
#: ``microhive.reason``: the planner's plan was refused and it is asked again; a
#: model call is retried (also ``microhive.attempt``); a sub-task ended without an
#: output it declared.
EVENT_PLAN_REFUSED = "plan_refused"
EVENT_MODEL_RETRY = "model_retry"
EVENT_OUTPUT_MISSING = "output_missing"

_STOP_EVENTS: tuple[tuple[type[MicrohiveError], str], ...] = (
    (HopLimitExceeded, EVENT_LOOP_STOPPED),
    (DeadlineExceeded, EVENT_DEADLINE_EXCEEDED),
    (BudgetExhausted, EVENT_BUDGET_EXHAUSTED),
    (Cancelled, EVENT_CANCELLED),
)


def _target(span: SpanRef) -> Span:
    if span is None:
        return trace.get_current_span()
    return span if isinstance(span, Span) else span.span


def context_attributes(ctx: CallContext) -> dict[str, AttributeValue]:
    """Hops, deadline and budget of a call context as span attributes."""
    values: dict[str, AttributeValue | None] = {
        "microhive.hops": ctx.hops,
        "microhive.max_hops": ctx.max_hops,
        "microhive.deadline": ctx.deadline,
        "microhive.budget.steps": ctx.budget_steps,
        "microhive.budget.tokens": ctx.budget_tokens,
    }
    return {k: v for k, v in values.items() if v is not None}


def record_call_context(ctx: CallContext, *, span: SpanRef = None) -> None:
    """Put hops, deadline and budget on the span (default: the current span)."""
    _target(span).set_attributes(context_attributes(ctx))


def set_run_id(run_id: str, *, span: SpanRef = None) -> None:
    """Tag the span with the run id, so ``microhive trace RUN_ID`` finds its trace."""
    _target(span).set_attribute(RUN_ID_ATTRIBUTE, run_id)


def _stop(span: Span, event: str, description: str, attrs: dict[str, AttributeValue]) -> None:
    span.add_event(event, {"microhive.reason": description, **attrs})
    span.set_status(Status(StatusCode.ERROR, f"{event}: {description}"))


def record_error(error: BaseException, *, span: SpanRef = None) -> None:
    """Mark the span failed with ``error.type`` and a readable description.

    A :class:`~microhive.errors.Stop` becomes its named event (``loop_stopped``,
    ``deadline_exceeded``, ...); anything else is recorded as an exception event.
    """
    target = _target(span)
    code = error.code if isinstance(error, MicrohiveError) else type(error).__qualname__
    target.set_attribute("error.type", code)
    for kind, event in _STOP_EVENTS:
        if isinstance(error, kind):
            _stop(target, event, str(error), {"error.type": code})
            return
    target.record_exception(error)
    target.set_status(Status(StatusCode.ERROR, f"{code}: {error}"))


def loop_stopped(
    hops: int, max_hops: int, *, where: str | None = None, span: SpanRef = None
) -> None:
    """A request or event ran out of hops and was stopped (e.g. sent to a dead letter)."""
    text = f"hop limit reached after {max_hops - hops} of {max_hops} hops"
    attrs: dict[str, AttributeValue] = {"microhive.hops": hops, "microhive.max_hops": max_hops}
    if where:
        attrs["microhive.where"] = where
        text += f" at {where}"
    _stop(_target(span), EVENT_LOOP_STOPPED, text, attrs)


def deadline_exceeded(
    deadline: float, *, overdue: float | None = None, span: SpanRef = None
) -> None:
    """The request's absolute deadline passed before the work finished."""
    text = "deadline passed" + (f" {overdue:.3f}s ago" if overdue is not None else "")
    _stop(_target(span), EVENT_DEADLINE_EXCEEDED, text, {"microhive.deadline": deadline})


def breaker_opened(
    dependency: str,
    *,
    failures: int | None = None,
    reset_after: float | None = None,
    span: SpanRef = None,
) -> None:
    """A circuit breaker opened: calls to ``dependency`` fail fast for a while."""
    text = f"circuit breaker for {dependency} opened"
    attrs: dict[str, AttributeValue] = {"microhive.dependency": dependency}
    if failures is not None:
        attrs["microhive.breaker.failures"] = failures
        text += f" after {failures} failures"
    if reset_after is not None:
        attrs["microhive.breaker.reset_after"] = reset_after
        text += f"; retrying in {reset_after:g}s"
    _stop(_target(span), EVENT_BREAKER_OPENED, text, attrs)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, or ``None`` outside any span."""
    span_ctx = trace.get_current_span().get_span_context()
    if not span_ctx.is_valid:
        return None
    return format(span_ctx.trace_id, "032x"), format(span_ctx.span_id, "016x")
