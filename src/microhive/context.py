"""The call context: what travels with every request, event and tool call.

A :class:`CallContext` carries

* the W3C trace context (``traceparent`` / ``tracestate``), read and written
  through OpenTelemetry's propagation API, so one goal keeps one trace id across
  every service;
* a hop count (hops *remaining*) and the maximum it started from, so a loop
  A -> B -> A stops by itself;
* an absolute deadline (Unix seconds), so no hop keeps working for a caller that
  has given up;
* a step and token budget (remaining), so an agent cannot spend without bound.

It is encoded to three carriers:

=================  ===============================  ==============================
field              HTTP and bus headers             MCP ``params._meta``
=================  ===============================  ==============================
trace context      ``traceparent``, ``tracestate``  ``traceparent``, ``tracestate``
hops remaining     ``microhive-hops``               ``io.microhive/hops``
maximum hops       ``microhive-max-hops``           ``io.microhive/max-hops``
deadline           ``microhive-deadline``           ``io.microhive/deadline``
step budget        ``microhive-budget-steps``       ``io.microhive/budget-steps``
token budget       ``microhive-budget-tokens``      ``io.microhive/budget-tokens``
=================  ===============================  ==============================

Header values are strings (the deadline as Unix seconds with a fractional part);
``_meta`` values are JSON numbers. A carrier without our keys decodes to the
defaults; a carrier with a malformed value raises :class:`InvalidContext` naming
the key. An invalid ``traceparent`` is ignored and a new trace starts, as the W3C
specification requires.

Each hop calls :meth:`CallContext.next_hop` before forwarding (checks the
deadline and hops, returns a copy with one hop fewer) and the receiver calls
:meth:`CallContext.check` (refuses work whose hops, deadline or budget have run
out). Both raise the typed :class:`~microhive.errors.Stop` errors.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from microhive.errors import (
    BudgetExhausted,
    DeadlineExceeded,
    HopLimitExceeded,
    InvalidContext,
)

__all__ = [
    "DEFAULT_MAX_HOPS",
    "HEADER_BUDGET_STEPS",
    "HEADER_BUDGET_TOKENS",
    "HEADER_DEADLINE",
    "HEADER_HOPS",
    "HEADER_MAX_HOPS",
    "META_PREFIX",
    "CallContext",
    "remote_parent",
    "trace_carrier",
]

DEFAULT_MAX_HOPS = 16
#: A hard ceiling on hops a carrier may claim, so a forged header cannot disable loop stops.
HOPS_CEILING = 1024

HEADER_HOPS = "microhive-hops"
HEADER_MAX_HOPS = "microhive-max-hops"
HEADER_DEADLINE = "microhive-deadline"
HEADER_BUDGET_STEPS = "microhive-budget-steps"
HEADER_BUDGET_TOKENS = "microhive-budget-tokens"

META_PREFIX = "io.microhive/"
_TRACE_KEYS = ("traceparent", "tracestate")

# (field name, header name, _meta key)
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("hops", HEADER_HOPS, META_PREFIX + "hops"),
    ("max_hops", HEADER_MAX_HOPS, META_PREFIX + "max-hops"),
    ("deadline", HEADER_DEADLINE, META_PREFIX + "deadline"),
    ("budget_steps", HEADER_BUDGET_STEPS, META_PREFIX + "budget-steps"),
    ("budget_tokens", HEADER_BUDGET_TOKENS, META_PREFIX + "budget-tokens"),
)

_current: ContextVar[CallContext | None] = ContextVar("microhive_call_context", default=None)


def trace_carrier(ctx: Context | None = None) -> dict[str, str]:
    """``traceparent``/``tracestate`` of ``ctx``'s span (default: the current one), nothing else."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return {k: v for k, v in carrier.items() if k in _TRACE_KEYS}


@dataclass(frozen=True, slots=True)
class CallContext:
    """What one request, event or tool call carries from hop to hop. Immutable."""

    trace: Mapping[str, str] = field(default_factory=dict)
    hops: int = DEFAULT_MAX_HOPS
    max_hops: int = DEFAULT_MAX_HOPS
    deadline: float | None = None
    budget_steps: int | None = None
    budget_tokens: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_hops <= HOPS_CEILING:
            raise InvalidContext(
                f"max_hops must be between 0 and {HOPS_CEILING}, got {self.max_hops}"
            )
        if not 0 <= self.hops <= self.max_hops:
            raise InvalidContext(
                f"hops must be between 0 and max_hops ({self.max_hops}), got {self.hops}"
            )
        if self.deadline is not None and not math.isfinite(self.deadline):
            raise InvalidContext(f"deadline must be a finite Unix time, got {self.deadline}")
        for name in ("budget_steps", "budget_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidContext(f"{name} must not be negative, got {value}")

    # ------------------------------------------------------------ creation

    @classmethod
    def new(
        cls,
        *,
        max_hops: int = DEFAULT_MAX_HOPS,
        timeout: float | None = None,
        deadline: float | None = None,
        budget_steps: int | None = None,
        budget_tokens: int | None = None,
    ) -> CallContext:
        """A fresh context at the edge of the mesh, joined to the current OTel span if any."""
        if timeout is not None:
            if deadline is not None:
                raise InvalidContext("give either timeout or deadline, not both")
            deadline = time.time() + timeout
        return cls(
            trace=trace_carrier(),
            hops=max_hops,
            max_hops=max_hops,
            deadline=deadline,
            budget_steps=budget_steps,
            budget_tokens=budget_tokens,
        )

    @classmethod
    def current(cls) -> CallContext:
        """The active context, with its trace refreshed from the current OTel span.

        Outside any :meth:`activate` block this is a fresh default context.
        """
        ctx = _current.get()
        span_ctx = trace.get_current_span().get_span_context()
        if ctx is None:
            # Outside any context and span every fresh default is equal (the carrier
            # keeps trace keys only): share one, it is immutable, instead of building
            # it and running the propagator each time.
            return cls.new() if span_ctx.is_valid else _DEFAULT
        if span_ctx.is_valid:
            return replace(ctx, trace=trace_carrier())
        return ctx

    @contextlib.contextmanager
    def activate(self, otel: Context | None = None) -> Iterator[CallContext]:
        """Make this the current context (ours and OpenTelemetry's) inside the block.

        ``otel`` is the OpenTelemetry context to make current, for a caller that
        already holds it (a span helper's live span, whose ``traceparent`` this
        context carries); by default it is parsed from this context's carrier.
        """
        token = _current.set(self)
        otel_token = otel_context.attach(self.otel_context() if otel is None else otel)
        try:
            yield self
        finally:
            otel_context.detach(otel_token)
            _current.reset(token)

    # ------------------------------------------------------------- queries

    def otel_context(self) -> Context:
        """The OpenTelemetry context holding the remote parent span of this hop."""
        return _parsed(self.trace)[0]

    @property
    def traceparent(self) -> str | None:
        return self.trace.get("traceparent")

    @property
    def trace_id(self) -> str | None:
        """The 32-hex-digit trace id, or ``None`` when no trace is carried."""
        span_ctx = trace.get_current_span(self.otel_context()).get_span_context()
        return format(span_ctx.trace_id, "032x") if span_ctx.is_valid else None

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (may be negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)

    # ------------------------------------------------------------ checking

    def check(self, now: float | None = None) -> None:
        """Refuse work that has run out of hops, time or budget (call on arrival)."""
        if self.hops <= 0:
            raise HopLimitExceeded(f"hop limit reached: {self.max_hops} hops used")
        left = self.remaining(now)
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"deadline passed {-left:.3f}s ago")
        if self.budget_steps is not None and self.budget_steps <= 0:
            raise BudgetExhausted("step budget exhausted")
        if self.budget_tokens is not None and self.budget_tokens <= 0:
            raise BudgetExhausted("token budget exhausted")

    def next_hop(self, now: float | None = None) -> CallContext:
        """The context to send onward: checked, with one hop fewer."""
        if self.hops <= 0:
            raise HopLimitExceeded(f"hop limit reached: {self.max_hops} hops used")
        left = self.remaining(now)
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"deadline passed {-left:.3f}s ago; not forwarding")
        return replace(self, hops=self.hops - 1)

    def spend(self, *, steps: int = 0, tokens: int = 0) -> CallContext:
        """The context after spending ``steps`` and ``tokens`` of the budget."""
        steps_left = self.budget_steps
        tokens_left = self.budget_tokens
        if steps_left is not None:
            if steps > steps_left:
                raise BudgetExhausted(f"step budget exhausted: {steps} needed, {steps_left} left")
            steps_left -= steps
        if tokens_left is not None:
            if tokens > tokens_left:
                raise BudgetExhausted(
                    f"token budget exhausted: {tokens} needed, {tokens_left} left"
                )
            tokens_left -= tokens
        return replace(self, budget_steps=steps_left, budget_tokens=tokens_left)

    # ------------------------------------------------------------ carriers

    def to_headers(self) -> dict[str, str]:
        """Encode for HTTP headers and bus message headers (string values)."""
        out = dict(self.trace)
        for name, header, _ in _FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            out[header] = repr(float(value)) if name == "deadline" else str(value)
        return out

    def inject_headers(self, headers: MutableMapping[str, str]) -> None:
        """Write this context into an existing header mapping."""
        headers.update(self.to_headers())

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> CallContext:
        """Decode from HTTP or bus headers (names are matched case-insensitively)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        values: dict[str, Any] = {}
        for name, header, _ in _FIELDS:
            raw = lowered.get(header)
            if raw is not None:
                values[name] = _parse(name, header, raw.strip())
        return cls._build(_trace_from(lowered), values)

    def to_meta(self) -> dict[str, Any]:
        """Encode for MCP ``params._meta`` (JSON values, reverse-DNS keys)."""
        out: dict[str, Any] = dict(self.trace)
        for name, _, key in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_meta(
        cls, meta: Mapping[str, Any] | None, *, trace: Mapping[str, str] | None = None
    ) -> CallContext:
        """Decode from MCP ``params._meta``; unrelated keys are left alone.

        ``trace`` replaces the carrier in ``meta``: a hop whose own span already
        follows the caller's (an SDK server span) passes that span's carrier, and
        the caller's ``traceparent`` is not parsed a second time.
        """
        meta = meta or {}
        values: dict[str, Any] = {}
        for name, _, key in _FIELDS:
            raw = meta.get(key)
            if raw is not None:
                values[name] = _parse(name, key, raw)
        if trace is not None:
            return cls._build({k: v for k, v in trace.items() if k in _TRACE_KEYS}, values)
        carrier = {k: v for k, v in meta.items() if k in _TRACE_KEYS and isinstance(v, str)}
        return cls._build(_trace_from(carrier), values)

    @classmethod
    def _build(cls, carrier: dict[str, str], values: dict[str, Any]) -> CallContext:
        if "max_hops" not in values:
            values["max_hops"] = max(DEFAULT_MAX_HOPS, values.get("hops", 0))
        values.setdefault("hops", values["max_hops"])
        return cls(trace=carrier, **values)


#: The context outside any request, event or span (see :meth:`CallContext.current`).
_DEFAULT = CallContext()


def _trace_from(carrier: Mapping[str, str]) -> dict[str, str]:
    """Keep the trace headers only if OpenTelemetry accepts them (W3C: ignore invalid)."""
    return dict(_parsed(carrier)[1]) if "traceparent" in carrier else {}


def remote_parent(carrier: Mapping[str, str]) -> Context | None:
    """The OTel context of a carrier's ``traceparent``/``tracestate``, or ``None`` if invalid.

    Keys must already be lower case. Shares :func:`_extract`'s cache.
    """
    if "traceparent" not in carrier:
        return None
    extracted, kept = _parsed(carrier)
    return extracted if kept else None


def _parsed(carrier: Mapping[str, str]) -> tuple[Context, tuple[tuple[str, str], ...]]:
    """:func:`_extract` of a carrier, under the global propagator of the moment."""
    return _extract(
        propagate.get_global_textmap(), carrier.get("traceparent"), carrier.get("tracestate")
    )


@functools.lru_cache(maxsize=1024)
def _extract(
    textmap: object, traceparent: str | None, tracestate: str | None
) -> tuple[Context, tuple[tuple[str, str], ...]]:
    """The OTel context of a trace carrier, and the carrier as OTel writes it back.

    One hop reads the same ``traceparent`` several times (the HTTP layer, the MCP
    layer, the span helpers); parsing it costs microseconds each time, so the
    result is kept per carrier (and per global propagator, which may be replaced).
    ``Context`` is immutable, so sharing it is safe. An invalid carrier gives an
    empty one back: W3C says to ignore it and start a new trace.
    """
    picked = {"traceparent": traceparent} if traceparent is not None else {}
    if tracestate is not None:
        picked["tracestate"] = tracestate
    extracted = propagate.extract(picked)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return extracted, ()
    return extracted, tuple(trace_carrier(extracted).items())


def _parse(name: str, key: str, raw: Any) -> int | float:
    """Read one numeric field; anything else is an InvalidContext naming the key."""
    try:
        if isinstance(raw, bool):
            raise ValueError
        if name == "deadline":
            value: int | float = float(raw)
            if not math.isfinite(value):
                raise ValueError
        elif isinstance(raw, int | str) or (isinstance(raw, float) and raw.is_integer()):
            value = int(raw)
        else:
            raise ValueError
    except (TypeError, ValueError):
        expected = "a Unix time in seconds" if name == "deadline" else "a whole number"
        raise InvalidContext(f"{key}: expected {expected}, got {raw!r}") from None
    if name in ("hops", "max_hops") and not 0 <= value <= HOPS_CEILING:
        raise InvalidContext(f"{key}: expected 0..{HOPS_CEILING}, got {raw!r}")
    if name.startswith("budget") and value < 0:
        raise InvalidContext(f"{key}: expected a non-negative number, got {raw!r}")
    return value
