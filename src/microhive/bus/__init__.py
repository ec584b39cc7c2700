"""The event bus: publish durably, subscribe as fan-out or as a queue group.

::

    from microhive.bus import open_bus

    async with open_bus("embedded://.microhive/bus") as bus:
        async def on_created(msg):
            print(msg.subject, msg.json(), msg.context.trace_id)

        await bus.subscribe("file.*", on_created, queue="indexer")
        ack = await bus.publish("file.created", {"path": "notes.md"}, msg_id="notes.md@1")

Backends are picked by URL scheme and imported only when used, so a plain
install does not need the NATS or Redis client:

============  ===================================================  ==========
scheme        what                                                 extra
============  ===================================================  ==========
memory://     in-process, for unit tests                           --
embedded://   durable SQLite log shared by local processes          --
nats://       NATS JetStream                                       ``nats``
redis://      Redis Streams                                        ``redis``
============  ===================================================  ==========

A new backend (Kafka, say) is one module with a :class:`Bus` subclass that
implements ``_connect/_disconnect/_store/_open_feed/ping`` plus a
:class:`~microhive.bus._core.Receipt` and :class:`~microhive.bus._core.Feed`,
and one line in :data:`BACKENDS`; the contract suite in ``tests/bus/`` then
tells whether it behaves.

Publishing and handling are traced (PRODUCER and CONSUMER spans in the
publisher's trace) once the process has a tracer provider, and
:func:`register_bus_metrics` puts each consumer's backlog and handlers in flight
on a service's ``/metrics``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from microhive.bus._bus import DLQ_PREFIX, Bus, Delivery, Handler, Subscription
from microhive.bus._core import PublishAck, Start, subject_matches
from microhive.bus._metrics import register_bus_metrics
from microhive.errors import InvalidInput

if TYPE_CHECKING:
    from microhive.config.model import BusSpec

__all__ = [
    "BACKENDS",
    "DLQ_PREFIX",
    "Bus",
    "Delivery",
    "Handler",
    "PublishAck",
    "Start",
    "Subscription",
    "bus_from_spec",
    "open_bus",
    "register_bus_metrics",
    "subject_matches",
]

#: URL scheme -> "module:class". Modules are imported on first use.
BACKENDS: dict[str, str] = {
    "memory": "microhive.bus.memory:MemoryBus",
    "embedded": "microhive.bus.embedded:EmbeddedBus",
    "nats": "microhive.bus.nats:NatsBus",
    "redis": "microhive.bus.redis:RedisBus",
}


def open_bus(url: str, *, dedup_window: float = 120.0, max_deliveries: int = 5) -> Bus:
    """The bus for ``url``, not yet connected: use ``async with`` or ``await bus.start()``.

    Raises :class:`InvalidInput` for an unknown scheme and
    :class:`~microhive.errors.MissingDependency` when the backend's extra is
    not installed.
    """
    scheme, sep, _ = url.partition("://")
    target = BACKENDS.get(scheme.lower()) if sep else None
    if target is None:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise InvalidInput(f"bus url {url!r}: expected one of {known}")
    module_name, _, class_name = target.partition(":")
    cls: type[Bus] = getattr(importlib.import_module(module_name), class_name)
    return cls(url, dedup_window=dedup_window, max_deliveries=max_deliveries)


def bus_from_spec(spec: BusSpec) -> Bus:
    """The bus a mesh file's ``bus:`` section describes."""
    return open_bus(spec.url, dedup_window=spec.dedup_window, max_deliveries=spec.max_deliveries)
