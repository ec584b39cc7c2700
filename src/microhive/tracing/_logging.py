"""Trace and span ids on log records, so a log line leads to its trace and back.

:class:`TraceContextFilter` reads the current OpenTelemetry span when a record is
created and sets ``record.trace_id`` / ``record.span_id`` (hex strings, or
``None`` outside a span). Attach it to a *handler* (``handler.addFilter(...)``)
so every record that handler formats carries the ids, whichever logger made it;
a format string can then use ``%(trace_id)s``. Ids a record already carries
(``extra={"trace_id": ...}``) are kept.
"""

from __future__ import annotations

import logging

from opentelemetry import trace

__all__ = ["TraceContextFilter", "install_log_filter"]


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` of the current span to every record (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            span_ctx = trace.get_current_span().get_span_context()
            if span_ctx.is_valid:
                record.trace_id = format(span_ctx.trace_id, "032x")
                record.span_id = format(span_ctx.span_id, "016x")
            else:
                record.trace_id = None
                record.span_id = None
        return True


def install_log_filter(handler: logging.Handler) -> TraceContextFilter:
    """Add one :class:`TraceContextFilter` to ``handler`` (idempotent); returns it."""
    for existing in handler.filters:
        if isinstance(existing, TraceContextFilter):
            return existing
    added = TraceContextFilter()
    handler.addFilter(added)
    return added
