"""How the bus shows up in a trace: a PRODUCER span per publish, a CONSUMER span per delivery.

The spans are the messaging ones of :mod:`microhive.tracing` (``publish
{subject}`` and ``process {subject}``). The publish span's ``traceparent`` goes
into the message headers, so each delivery -- redeliveries included -- is a
child of (and linked to) the span that created the message, in the publisher's
trace, whichever process consumes it.

Tracing is off until a process installs a tracer provider (``microhive serve``
does). While the global provider is OpenTelemetry's no-op default, the bus opens
no span at all: :func:`tracing_on` is the one check on the hot path.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Status, StatusCode

from microhive.tracing import TracedSpan, record_error

__all__ = ["mark_dead_letter", "tracing_on"]

_NO_OP = (ProxyTracerProvider, NoOpTracerProvider)
#: OpenTelemetry may build the provider lazily from this variable on first use.
_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
_ENVIRON_AT_IMPORT = frozenset(os.environ)


def tracing_on() -> bool:
    """True once the process has a real tracer provider (spans are worth opening).

    Called twice per message. ``get_tracer_provider()`` looks at the environment
    on every call while no provider is set (~0.6 µs); the API module's global
    tells the same in ~0.03 µs, so it is read first when it exists.
    """
    installed = getattr(trace, "_TRACER_PROVIDER", trace)
    if installed is None and _FROM_ENV not in _ENVIRON_AT_IMPORT:
        return False  # nothing installed: the common case of a process without tracing
    return not isinstance(trace.get_tracer_provider(), _NO_OP)


def mark_dead_letter(
    span: TracedSpan | None, reason: str, code: str, error: BaseException | None = None
) -> None:
    """Record on the process span that its message was dead-lettered, and why.

    A stop (hop limit, deadline, budget) becomes its named event
    (``loop_stopped``...); a handler's exception is recorded as the error;
    anything else (max deliveries, malformed message, a handler's ``term``)
    gets the dead-letter code as ``error.type`` and the reason as description.
    """
    if span is None or not span.span.is_recording():
        return
    target = span.span
    target.set_attribute("microhive.dlq.code", code)
    target.set_attribute("microhive.dlq.reason", reason[:1000])
    if isinstance(error, Exception):  # a Stop included: its event (loop_stopped...)
        record_error(error, span=target)
        return
    target.set_attribute("error.type", code)
    target.set_status(Status(StatusCode.ERROR, f"dead-lettered ({code}): {reason}"[:1000]))
