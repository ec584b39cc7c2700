"""Tracing across the mesh: OpenTelemetry set-up, span helpers, the embedded trace store.

A service process calls :func:`setup_tracing` once at start (the service runtime
does it, then :meth:`TracingHandle.install`) and closes the handle at shutdown.
Code that does work wraps it in a span helper::

    with tool_span("web.fetch", call_id, arguments=args) as span:
        result = await fetch(args)
        span.tool_result(result)            # recorded only with capture_content

    with chat_span("openai", "gpt-4o-mini", input_messages=msgs) as span:
        reply = await model.chat(msgs)
        span.usage(input_tokens=reply.input_tokens, output_tokens=reply.output_tokens)

    headers = ctx.next_hop().to_headers()
    with publish_span("nats", "file.created", headers=headers):
        await bus.publish("file.created", body, headers=headers)

    with process_span("nats", msg.subject, msg.headers, delivery_attempt=n):
        ...

Pollers and other housekeeping run inside :func:`background`, which marks the
traces they start (``microhive.background``) so trace lists can hide them.

Every process writes to one SQLite file (``stores.traces``); :class:`TraceStore`
reads it back and ``microhive trace`` draws the waterfall. Logs get the ids via
:class:`TraceContextFilter`; ``/metrics`` gets call latencies via
:func:`register_call_metrics`.
"""

from microhive.tracing._background import (
    BACKGROUND_ATTRIBUTE,
    BackgroundMarker,
    background,
    in_background,
)
from microhive.tracing._events import (
    EVENT_BREAKER_OPENED,
    EVENT_BUDGET_EXHAUSTED,
    EVENT_CANCELLED,
    EVENT_DEADLINE_EXCEEDED,
    EVENT_LOOP_STOPPED,
    EVENT_MODEL_RETRY,
    EVENT_OUTPUT_MISSING,
    EVENT_PLAN_REFUSED,
    breaker_opened,
    context_attributes,
    current_ids,
    deadline_exceeded,
    loop_stopped,
    record_call_context,
    record_error,
    set_run_id,
)
from microhive.tracing._ids import ClockFirstIdGenerator, new_span_id, new_trace_id
from microhive.tracing._logging import TraceContextFilter, install_log_filter
from microhive.tracing._metrics import BREAKER_STATES, CallMetrics, register_call_metrics
from microhive.tracing._setup import (
    MeshTracerProvider,
    TracingHandle,
    TracingSettings,
    otlp_endpoint,
    setup_tracing,
)
from microhive.tracing._spans import (
    TracedSpan,
    agent_span,
    chat_span,
    client_span,
    creation_context,
    mcp_client_span,
    mcp_server_span,
    process_span,
    publish_span,
    server_span,
    tool_span,
)
from microhive.tracing._sqlite import (
    DEFAULT_STORE_URL,
    RUN_ID_ATTRIBUTE,
    SqliteSpanExporter,
    store_path,
)
from microhive.tracing._store import StoredSpan, TraceStore, TraceSummary
from microhive.tracing._view import render_trace_list, render_waterfall

__all__ = [
    "BACKGROUND_ATTRIBUTE",
    "BREAKER_STATES",
    "DEFAULT_STORE_URL",
    "EVENT_BREAKER_OPENED",
    "EVENT_BUDGET_EXHAUSTED",
    "EVENT_CANCELLED",
    "EVENT_DEADLINE_EXCEEDED",
    "EVENT_LOOP_STOPPED",
    "EVENT_MODEL_RETRY",
    "EVENT_OUTPUT_MISSING",
    "EVENT_PLAN_REFUSED",
    "RUN_ID_ATTRIBUTE",
    "BackgroundMarker",
    "CallMetrics",
    "ClockFirstIdGenerator",
    "MeshTracerProvider",
    "SqliteSpanExporter",
    "StoredSpan",
    "TraceContextFilter",
    "TraceStore",
    "TraceSummary",
    "TracedSpan",
    "TracingHandle",
    "TracingSettings",
    "agent_span",
    "background",
    "breaker_opened",
    "chat_span",
    "client_span",
    "context_attributes",
    "creation_context",
    "current_ids",
    "deadline_exceeded",
    "in_background",
    "install_log_filter",
    "loop_stopped",
    "mcp_client_span",
    "mcp_server_span",
    "new_span_id",
    "new_trace_id",
    "otlp_endpoint",
    "process_span",
    "publish_span",
    "record_call_context",
    "record_error",
    "register_call_metrics",
    "render_trace_list",
    "render_waterfall",
    "server_span",
    "set_run_id",
    "setup_tracing",
    "store_path",
    "tool_span",
]
