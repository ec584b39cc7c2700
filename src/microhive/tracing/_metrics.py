"""Latency histograms for tool and model calls, and circuit-breaker state, for ``/metrics``.

The service runtime owns each service's registry and its HTTP request metrics;
this adds the call-level ones any service can register on that registry::

    calls = register_call_metrics(registry)
    with calls.tool_call("web.fetch"):
        ...
    calls.set_breaker("web", "open")

Names: ``microhive_tool_call_duration_seconds{tool,outcome}``,
``microhive_model_call_duration_seconds{provider,model,outcome}`` (outcome is
``ok`` or the error code) and ``microhive_breaker_state{dependency}``
(0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, Histogram

from microhive.errors import InvalidInput, MicrohiveError

__all__ = ["BREAKER_STATES", "CallMetrics", "register_call_metrics"]

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _outcome(exc: BaseException) -> str:
    return exc.code if isinstance(exc, MicrohiveError) else "error"


@dataclass(frozen=True, slots=True)
class CallMetrics:
    """The registered collectors, with small helpers that time a call and label its outcome."""

    tool_calls: Histogram
    model_calls: Histogram
    breaker_state: Gauge

    @contextmanager
    def tool_call(self, tool: str) -> Iterator[None]:
        start = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self.tool_calls.labels(tool, outcome).observe(time.perf_counter() - start)

    @contextmanager
    def model_call(self, provider: str, model: str) -> Iterator[None]:
        start = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self.model_calls.labels(provider, model, outcome).observe(time.perf_counter() - start)

    def set_breaker(self, dependency: str, state: str) -> None:
        """Record a breaker's state: ``closed``, ``half_open`` or ``open``."""
        try:
            value = BREAKER_STATES[state]
        except KeyError:
            known = ", ".join(BREAKER_STATES)
            raise InvalidInput(f"breaker state must be one of {known}, got {state!r}") from None
        self.breaker_state.labels(dependency).set(value)


def register_call_metrics(registry: CollectorRegistry) -> CallMetrics:
    """Create the tool-call, model-call and breaker collectors on ``registry`` (once each)."""
    return CallMetrics(
        tool_calls=Histogram(
            "microhive_tool_call_duration_seconds",
            "Time spent in tool calls, by tool and outcome.",
            ("tool", "outcome"),
            buckets=_BUCKETS,
            registry=registry,
        ),
        model_calls=Histogram(
            "microhive_model_call_duration_seconds",
            "Time spent in model calls, by provider, model and outcome.",
            ("provider", "model", "outcome"),
            buckets=_BUCKETS,
            registry=registry,
        ),
        breaker_state=Gauge(
            "microhive_breaker_state",
            "Circuit-breaker state per dependency: 0 closed, 1 half-open, 2 open.",
            ("dependency",),
            registry=registry,
        ),
    )
