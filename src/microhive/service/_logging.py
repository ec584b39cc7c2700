"""JSON log lines carrying the trace id.

Every line is one JSON object -- ``ts``, ``level``, ``logger``, ``msg``,
``service``, ``replica``, ``trace_id``, ``span_id`` and any ``extra=`` fields --
so the supervisor, ``microhive logs`` and any log shipper can read them without
guessing, and a trace id found in the trace viewer finds its log lines.

The trace and span id come from the current OpenTelemetry span. Inside a
request the service middleware activates the call context, which makes the
caller's (or our server span's) context current, so handlers' own log calls
carry the id without passing anything around. A record may also name them
explicitly (``extra={"trace_id": ...}``), as the access log does.

Nothing here runs at import time: :func:`configure_logging` is called by the
runner when a service process starts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from opentelemetry import trace

__all__ = ["JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}
)
_OURS = "_microhive_json_handler"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never raises on odd ``extra`` values)."""

    def __init__(self, service: str | None = None, replica: int | None = None) -> None:
        super().__init__()
        self.service = service
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", None)
        span_id = getattr(record, "span_id", None)
        if trace_id is None:
            span_ctx = trace.get_current_span().get_span_context()
            if span_ctx.is_valid:
                trace_id = format(span_ctx.trace_id, "032x")
                span_id = format(span_ctx.span_id, "016x")
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
            "replica": self.replica,
            "trace_id": trace_id,
            "span_id": span_id,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(
    service: str | None = None,
    replica: int | None = None,
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log record of this process as JSON lines to ``stream`` (stderr).

    Installs one handler on the root logger, replacing one an earlier call
    installed (so calling it twice does not double every line), and lets
    uvicorn's loggers propagate into it.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service, replica))
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    return handler
