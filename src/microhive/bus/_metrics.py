"""The bus on a service's ``/metrics``: backlog per consumer group, handlers in flight.

A service that subscribes registers one collector on its registry::

    register_bus_metrics(service.registry, lambda: state.get("bus"))

and every subscription of that bus in the process is reported at scrape time:

=======================================  =================  ==========================
metric                                   labels             meaning
=======================================  =================  ==========================
``microhive_bus_pending_messages``       consumer, pattern  stored, not yet delivered
                                                            to the group (queue depth)
``microhive_bus_unacked_messages``       consumer, pattern  delivered, not yet settled
``microhive_bus_handlers_in_flight``     consumer, pattern  handlers running here
``microhive_bus_messages_total``         consumer, outcome  received / acked / failed /
                                                            dead_lettered (this process)
=======================================  =================  ==========================

The backlog comes from the backend (embedded: a count; NATS: the consumer's
``num_pending`` / ``num_ack_pending``; Redis: the group's ``lag`` / ``pending``,
where ``lag`` counts every subject of the namespace's stream). A scrape reads
the last figure, refreshed in the background at most once a second, so it never
waits on the backend; a figure the backend cannot give is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from microhive.bus._bus import Bus

__all__ = ["BusCollector", "register_bus_metrics"]

_OUTCOMES = ("received", "acked", "failed", "dead_lettered")


class BusCollector(Collector):
    """Reports the subscriptions of the bus ``bus_of()`` returns (none while it is ``None``)."""

    def __init__(self, bus_of: Callable[[], Bus | None]) -> None:
        self._bus_of = bus_of

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        labels = ["consumer", "pattern"]
        return (
            GaugeMetricFamily(
                "microhive_bus_pending_messages",
                "Messages stored for a consumer group and not yet delivered (queue depth).",
                labels=labels,
            ),
            GaugeMetricFamily(
                "microhive_bus_unacked_messages",
                "Messages delivered to a consumer group and not yet acknowledged.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "microhive_bus_handlers_in_flight",
                "Message handlers running in this process.",
                labels=labels,
            ),
        )

    def _counter(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "microhive_bus_messages",
            "Deliveries handled by this process, by consumer and outcome.",
            labels=["consumer", "outcome"],
        )

    def describe(self) -> Iterable[Metric]:
        return [*self._families(), self._counter()]

    def collect(self) -> Iterable[Metric]:
        waiting, unacked, in_flight = self._families()
        counter = self._counter()
        bus = self._bus_of()
        for sub in bus.subscriptions if bus is not None else ():
            stats = sub.stats()
            labels = [sub.spec.name, sub.spec.pattern]
            if stats["waiting"] is not None:
                waiting.add_metric(labels, stats["waiting"])
            if stats["unacked"] is not None:
                unacked.add_metric(labels, stats["unacked"])
            in_flight.add_metric(labels, stats["in_flight"])
            for outcome in _OUTCOMES:
                counter.add_metric([sub.spec.name, outcome], stats[outcome])
        return [waiting, unacked, in_flight, counter]


def register_bus_metrics(
    registry: CollectorRegistry, bus: Bus | Callable[[], Bus | None]
) -> BusCollector:
    """Report ``bus``'s subscriptions on ``registry``.

    ``bus`` may be a function returning the bus (or ``None``), for services that
    open their bus only at start-up.
    """
    from microhive.bus._bus import Bus

    collector = BusCollector((lambda: bus) if isinstance(bus, Bus) else bus)
    registry.register(collector)
    return collector
