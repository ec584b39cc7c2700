"""Trace ids on log records; tool/model latency and breaker metrics on a registry."""

from __future__ import annotations

import io
import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from microhive.errors import InvalidInput, TimeoutFailure
from microhive.tracing import (
    TraceContextFilter,
    TracingSettings,
    install_log_filter,
    register_call_metrics,
    setup_tracing,
    tool_span,
)


def test_log_records_carry_the_current_trace_and_span(store_url: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s trace=%(trace_id)s span=%(span_id)s"))
    added = install_log_filter(handler)
    assert install_log_filter(handler) is added  # idempotent
    assert isinstance(added, TraceContextFilter)
    logger = logging.getLogger("microhive.test.tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with setup_tracing("svc", 0, TracingSettings(store_url=store_url)) as handle:
            logger.info("outside")
            with tool_span("x", provider=handle.provider) as span:
                logger.info("inside")
                ids = (span.trace_id, format(span.span.get_span_context().span_id, "016x"))
            logger.info("explicit", extra={"trace_id": "abc", "span_id": "def"})
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "outside trace=None span=None",
        f"inside trace={ids[0]} span={ids[1]}",
        "explicit trace=abc span=def",
    ]


def test_call_metrics_on_a_registry() -> None:
    registry = CollectorRegistry()
    calls = register_call_metrics(registry)
    with calls.tool_call("web.fetch"):
        pass
    with pytest.raises(TimeoutFailure), calls.tool_call("web.fetch"):
        raise TimeoutFailure("slow")
    with calls.model_call("offline", "offline"):
        pass
    calls.set_breaker("web", "open")
    with pytest.raises(InvalidInput, match="breaker state"):
        calls.set_breaker("web", "ajar")
    text = generate_latest(registry).decode()
    assert 'microhive_tool_call_duration_seconds_count{outcome="ok",tool="web.fetch"} 1.0' in text
    assert (
        'microhive_tool_call_duration_seconds_count{outcome="timeout",tool="web.fetch"} 1.0' in text
    )
    assert (
        'microhive_model_call_duration_seconds_count{model="offline",outcome="ok",'
        'provider="offline"} 1.0' in text
    )
    assert 'microhive_breaker_state{dependency="web"} 2.0' in text
