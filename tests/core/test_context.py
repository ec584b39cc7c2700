"""The call context round-trips through all three carriers and enforces its limits."""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from microhive.context import HEADER_HOPS, CallContext
from microhive.errors import (
    BudgetExhausted,
    DeadlineExceeded,
    HopLimitExceeded,
    InvalidContext,
    Stop,
)

_provider = TracerProvider()
_tracer = _provider.get_tracer("tests")


def _traced_context(**kwargs: object) -> CallContext:
    with _tracer.start_as_current_span("edge"):
        return CallContext.new(**kwargs)  # type: ignore[arg-type]


def test_fresh_context_joins_the_current_span() -> None:
    with _tracer.start_as_current_span("edge") as span:
        ctx = CallContext.new()
        expected = format(span.get_span_context().trace_id, "032x")
    assert ctx.trace_id == expected
    assert ctx.traceparent is not None and expected in ctx.traceparent


@pytest.mark.parametrize("carrier", ["headers", "meta"])
def test_round_trip_through_every_carrier(carrier: str) -> None:
    ctx = _traced_context(max_hops=7, timeout=30.0, budget_steps=12, budget_tokens=4000)
    ctx = ctx.next_hop()
    if carrier == "headers":
        back = CallContext.from_headers(ctx.to_headers())
    else:
        back = CallContext.from_meta(ctx.to_meta())
    assert back == ctx
    assert back.hops == 6 and back.max_hops == 7
    assert back.trace_id == ctx.trace_id


def test_bus_and_http_headers_share_names_and_are_case_insensitive() -> None:
    ctx = _traced_context(max_hops=3)
    shouted = {k.upper(): v for k, v in ctx.to_headers().items()}
    assert CallContext.from_headers(shouted) == ctx


def test_meta_uses_reverse_dns_keys_and_json_numbers() -> None:
    meta = CallContext.new(max_hops=5, timeout=10).to_meta()
    assert meta["io.microhive/hops"] == 5
    assert isinstance(meta["io.microhive/deadline"], float)
    assert all(k.startswith("io.microhive/") or k in ("traceparent", "tracestate") for k in meta)


def test_missing_carrier_gives_defaults() -> None:
    ctx = CallContext.from_headers({"content-type": "text/plain"})
    assert ctx.hops == ctx.max_hops == 16
    assert ctx.deadline is None and ctx.trace_id is None


def test_unrelated_meta_keys_are_ignored() -> None:
    ctx = CallContext.from_meta({"progressToken": 3, "io.example/x": "y"})
    assert ctx.hops == 16


def test_a_hop_can_give_its_own_trace_carrier_in_place_of_the_callers() -> None:
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    own = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
    meta = {"traceparent": caller, "io.microhive/hops": 4, "io.microhive/max-hops": 8}
    ctx = CallContext.from_meta(meta, trace={"traceparent": own, "baggage": "k=v"})
    assert ctx.trace == {"traceparent": own}  # trace keys only
    assert (ctx.hops, ctx.max_hops) == (4, 8)  # the rest still comes from meta
    assert CallContext.from_meta(meta).traceparent == caller


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({HEADER_HOPS: "three"}, "microhive-hops"),
        ({HEADER_HOPS: "-1"}, "microhive-hops"),
        ({HEADER_HOPS: "999999"}, "microhive-hops"),
        ({"microhive-deadline": "tomorrow"}, "microhive-deadline"),
        ({"microhive-deadline": "nan"}, "microhive-deadline"),
        ({"microhive-budget-tokens": "-5"}, "microhive-budget-tokens"),
        ({HEADER_HOPS: "9", "microhive-max-hops": "3"}, "hops"),
    ],
)
def test_malformed_headers_name_the_problem(headers: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidContext, match=named):
        CallContext.from_headers(headers)


@pytest.mark.parametrize("value", ["3", True, 2.5, [1], {"a": 1}])
def test_malformed_meta_values_are_refused(value: object) -> None:
    if value == "3":
        assert CallContext.from_meta({"io.microhive/hops": value}).hops == 3
        return
    with pytest.raises(InvalidContext, match=r"io\.microhive/hops"):
        CallContext.from_meta({"io.microhive/hops": value})


def test_invalid_traceparent_is_dropped_not_trusted() -> None:
    ctx = CallContext.from_headers({"traceparent": "00-zz-bad-01"})
    assert ctx.trace == {} and ctx.trace_id is None


def test_hops_decrement_then_stop() -> None:
    ctx = CallContext.new(max_hops=2)
    ctx = ctx.next_hop()
    ctx.check()
    ctx = ctx.next_hop()
    assert ctx.hops == 0
    with pytest.raises(HopLimitExceeded, match="hop limit"):
        ctx.check()
    with pytest.raises(HopLimitExceeded):
        ctx.next_hop()


def test_passed_deadline_is_refused_and_not_forwarded() -> None:
    ctx = CallContext.new(deadline=time.time() - 1)
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        ctx.check()
    with pytest.raises(DeadlineExceeded, match="not forwarding"):
        ctx.next_hop()


def test_budget_is_spent_and_exhausted() -> None:
    ctx = CallContext.new(budget_steps=2, budget_tokens=100)
    ctx = ctx.spend(steps=1, tokens=60)
    assert (ctx.budget_steps, ctx.budget_tokens) == (1, 40)
    with pytest.raises(BudgetExhausted, match="token budget"):
        ctx.spend(tokens=41)
    ctx = ctx.spend(steps=1)
    with pytest.raises(BudgetExhausted, match="step budget"):
        ctx.check()


def test_stops_are_one_family() -> None:
    assert issubclass(HopLimitExceeded, Stop) and issubclass(DeadlineExceeded, Stop)


def test_activate_sets_current_and_the_otel_parent() -> None:
    ctx = _traced_context(max_hops=4)
    assert CallContext.current().hops == 16
    with ctx.activate():
        assert CallContext.current().hops == 4
        with _tracer.start_as_current_span("child") as child:
            parent = child.parent
            assert parent is not None
            assert format(parent.trace_id, "032x") == ctx.trace_id
            # current() refreshes the trace from the active span, so the next hop's parent is it
            inner = CallContext.current()
            assert inner.traceparent is not None
            assert format(child.get_span_context().span_id, "016x") in inner.traceparent
    assert CallContext.current().hops == 16


def test_timeout_and_deadline_are_exclusive() -> None:
    with pytest.raises(InvalidContext):
        CallContext.new(timeout=1, deadline=time.time() + 5)


def test_global_tracer_provider_is_not_required() -> None:
    # With only the API's no-op provider there is no trace, but everything else works.
    assert trace.get_tracer_provider() is not _provider
    ctx = CallContext.new(max_hops=3)
    assert ctx.trace_id is None
    assert CallContext.from_headers(ctx.to_headers()) == ctx


def test_parsed_carriers_are_reused_but_follow_a_replaced_propagator() -> None:
    """Parsing is cached per carrier and per global propagator, never across them."""
    from opentelemetry import propagate
    from opentelemetry.propagators.composite import CompositePropagator

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    first = CallContext.from_meta({"traceparent": parent})
    again = CallContext.from_meta({"traceparent": parent})
    assert first.trace == again.trace == {"traceparent": parent}
    assert first.trace is not again.trace  # each context owns its carrier
    assert first.trace_id == "0af7651916cd43dd8448eb211c80319c"
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([]))  # propagates nothing
    try:
        assert CallContext.from_meta({"traceparent": parent}).trace == {}
        assert first.trace_id is None  # the same carrier, read by the new propagator
    finally:
        propagate.set_global_textmap(previous)
    assert first.trace_id == "0af7651916cd43dd8448eb211c80319c"
