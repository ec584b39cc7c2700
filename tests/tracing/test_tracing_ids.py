"""Trace ids: the wrapping millisecond clock first (for the store's index), then random bits."""

from __future__ import annotations

import time
from pathlib import Path

from opentelemetry import propagate

from microhive.tracing import TracingSettings, new_span_id, new_trace_id, setup_tracing

_RANDOM_BITS = 112


def _clock_now() -> int:
    return time.time_ns() // 1_000_000


def _clocks_between(before: int, after: int) -> set[int]:
    return {ms & 0xFFFF for ms in range(before, after + 1)}


def test_a_trace_id_starts_with_the_millisecond_clock_modulo_65536() -> None:
    before = _clock_now()
    trace_id = new_trace_id()
    after = _clock_now()
    assert 0 < trace_id < 1 << 128
    assert trace_id >> _RANDOM_BITS in _clocks_between(before, after)


def test_the_other_112_bits_are_random() -> None:
    ids = [new_trace_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    low = [i & ((1 << _RANDOM_BITS) - 1) for i in ids]
    seen_set = 0
    seen_clear = 0
    for value in low:
        seen_set |= value
        seen_clear |= ~value
    every_bit = (1 << _RANDOM_BITS) - 1
    # each of the 112 bits came out both 0 and 1 (a fixed bit would show up here)
    assert seen_set & every_bit == every_bit
    assert seen_clear & every_bit == every_bit


def test_span_ids_are_valid_and_distinct() -> None:
    ids = {new_span_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(0 < i < 1 << 64 for i in ids)


def test_a_mesh_provider_starts_traces_with_them_and_flags_them_random(tmp_path: Path) -> None:
    settings = TracingSettings(store_url=f"sqlite:///{tmp_path}/traces.db")
    with setup_tracing("svc", 0, settings) as handle:
        tracer = handle.tracer()
        before = _clock_now()
        with tracer.start_as_current_span("root") as span:
            after = _clock_now()
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        ctx = span.get_span_context()
    assert ctx.trace_id >> _RANDOM_BITS in _clocks_between(before, after)
    assert ctx.trace_flags.sampled
    # W3C level 2 "random" flag (0x02): the rightmost 7 bytes of the id are random
    assert ctx.trace_flags & 0x02
    assert carrier["traceparent"].endswith("-03")


def test_ratio_sampling_still_follows_the_ratio(tmp_path: Path) -> None:
    """``TraceIdRatioBased`` reads the id's low 64 bits, which stay random."""
    settings = TracingSettings(store_url=f"sqlite:///{tmp_path}/traces.db", sample_ratio=0.25)
    with setup_tracing("svc", 0, settings) as handle:
        tracer = handle.tracer()
        sampled = 0
        for _ in range(4000):
            span = tracer.start_span("root")
            sampled += span.is_recording()
            span.end()
    # binomial(4000, 0.25): the standard deviation is 0.0068, so this is over 7 of them
    assert 0.20 < sampled / 4000 < 0.30


def test_traces_from_outside_keep_their_ids(tmp_path: Path) -> None:
    settings = TracingSettings(store_url=f"sqlite:///{tmp_path}/traces.db")
    foreign = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = propagate.extract({"traceparent": f"00-{foreign}-00f067aa0ba902b7-01"})
    with (
        setup_tracing("svc", 0, settings) as handle,
        handle.tracer().start_as_current_span("child", context=parent) as span,
    ):
        assert format(span.get_span_context().trace_id, "032x") == foreign
