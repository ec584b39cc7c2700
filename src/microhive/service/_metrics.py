"""Prometheus metrics of one service, on a registry of its own.

Each :class:`~microhive.service.Service` owns a :class:`CollectorRegistry`, never
the process-global one: two services built in one process (as tests and the
all-in-one mode do) keep separate numbers, and importing a module never
registers anything. Other parts add their own metrics through
:meth:`ServiceMetrics.counter` and friends, or by passing ``registry=`` to any
``prometheus_client`` metric.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServiceMetrics"]

#: Request latency buckets in seconds: from sub-millisecond tool calls to slow model calls.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    """The request metrics every service has, plus a home for more."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "microhive_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "microhive_http_request_duration_seconds",
            "Time from request start to the end of the response, in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "microhive_http_requests_in_flight",
            "Requests being handled right now.",
            registry=self.registry,
        )
        self.errors = Counter(
            "microhive_http_errors",
            "Requests that ended in an error, by method, route and error code.",
            ("method", "route", "error"),
            registry=self.registry,
        )

    # ----------------------------------------------------------- extension

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A new counter on this service's registry."""
        return Counter(name, documentation, tuple(labels), registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A new gauge on this service's registry."""
        return Gauge(name, documentation, tuple(labels), registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        """A new histogram on this service's registry."""
        return Histogram(
            name, documentation, tuple(labels), buckets=tuple(buckets), registry=self.registry
        )

    # ------------------------------------------------------------ exposing

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric on the registry."""
        return generate_latest(self.registry)

    def observe(
        self, method: str, route: str, status: int, seconds: float, error: str | None
    ) -> None:
        """Record one finished request."""
        status_label = str(status)
        self.requests.labels(method, route, status_label).inc()
        self.latency.labels(method, route, status_label).observe(seconds)
        if error is not None:
            self.errors.labels(method, route, error).inc()
