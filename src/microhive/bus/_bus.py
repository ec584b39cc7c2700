"""The bus interface: publishing, subscribing, the lifecycle every backend shares.

Backends only store messages and hand out deliveries (:mod:`._core`); what a
delivery turns into -- the handler call, retries, dead letters -- is in
:mod:`._consume`, the same for every backend.

With a tracer provider installed, a publish is a ``publish {subject}`` PRODUCER
span whose ``traceparent`` the message carries, so every delivery of it -- on
any process, redeliveries included -- is in the publisher's trace (:mod:`._tracing`).
"""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self

from opentelemetry import context as otel_context

from microhive.bus._consume import (
    CONTEXT_HEADERS,
    DLQ_PREFIX,
    Delivery,
    Handler,
    Subscription,
)
from microhive.bus._core import (
    CONTENT_TYPE,
    HEADER_MSG_ID,
    ConsumerSpec,
    Feed,
    PublishAck,
    Start,
    check_backoff,
    encode_payload,
    validate_headers,
    validate_msg_id,
    validate_pattern,
    validate_subject,
)
from microhive.bus._tracing import tracing_on
from microhive.context import DEFAULT_MAX_HOPS, HEADER_MAX_HOPS, CallContext
from microhive.errors import InvalidInput, ServiceUnavailable
from microhive.tracing import creation_context, publish_span

__all__ = ["DLQ_PREFIX", "Bus", "Delivery", "Handler", "Subscription"]

_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DEFAULT_MAX_HOPS = str(DEFAULT_MAX_HOPS)


class Bus(ABC):
    """Publish and subscribe, durably. Open one with :func:`microhive.bus.open_bus`.

    ``async with open_bus(url) as bus:`` connects and closes; ``await bus.start()``
    and ``await bus.aclose()`` do the same by hand.
    """

    #: URL scheme this backend serves (``memory``, ``embedded``, ``nats``, ``redis``).
    scheme: str = ""

    def __init__(self, url: str, *, dedup_window: float = 120.0, max_deliveries: int = 5) -> None:
        if dedup_window <= 0:
            raise InvalidInput(f"dedup_window must be positive, got {dedup_window}")
        if max_deliveries < 1:
            raise InvalidInput(f"max_deliveries must be >= 1, got {max_deliveries}")
        self.url = url
        self.dedup_window = dedup_window
        self.max_deliveries = max_deliveries
        self._subscriptions: set[Subscription] = set()
        self._last_hop: tuple[CallContext, CallContext, dict[str, str]] | None = None
        self._started = False
        self._closed = False

    # ------------------------------------------------------------ backend API

    @abstractmethod
    async def _connect(self) -> None:
        """Open connections and create what the backend needs (streams, tables)."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Release connections."""

    @abstractmethod
    async def _store(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str
    ) -> PublishAck:
        """Store durably (deduplicating ``msg_id`` within the window), then return.

        ``headers`` is a dict made for this call: the backend may change it.
        """

    @abstractmethod
    async def _open_feed(self, spec: ConsumerSpec) -> Feed:
        """Create or join the consumer described by ``spec``."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise :class:`ServiceUnavailable` unless the backend answers (readiness)."""

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> Self:
        if self._closed:
            raise ServiceUnavailable(f"bus {self.url} is closed")
        if not self._started:
            await self._connect()
            self._started = True
        return self

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.aclose()
        if self._started:
            await self._disconnect()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The subscriptions running on this bus in this process."""
        return tuple(self._subscriptions)

    def _check_open(self) -> None:
        if self._closed or not self._started:
            raise ServiceUnavailable(f"bus {self.url} is not open (use 'async with open_bus(...)')")

    # ------------------------------------------------------------ public API

    async def publish(
        self,
        subject: str,
        payload: object = b"",
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> PublishAck:
        """Store a message and return once it is durable.

        ``payload`` is bytes, str or a JSON-able value. The current call context
        goes into the headers with one hop fewer (explicit ``headers`` win).
        The same ``msg_id`` again within the dedup window stores nothing and
        returns an ack with ``duplicate=True``.
        """
        self._check_open()
        subject = validate_subject(subject)
        msg_id = uuid.uuid4().hex if msg_id is None else validate_msg_id(msg_id)
        data, content_type = encode_payload(payload)
        hop, merged = self._next_hop()
        if content_type is not None:
            merged[CONTENT_TYPE] = content_type
        explicit = False
        extra: dict[str, str] = {}
        if headers is not None:
            extra = validate_headers(headers)
            merged.update(extra)
            explicit = any(k in CONTEXT_HEADERS for k in extra)
            if explicit:  # malformed context headers -> InvalidContext
                hop = CallContext.from_headers(merged)
        merged[HEADER_MSG_ID] = msg_id
        if not tracing_on():
            return await self._store(subject, data, merged, msg_id)
        # The message carries the PRODUCER span as its creation context. A
        # traceparent given explicitly (a replay, `events publish -H`) is its parent.
        parent = creation_context(extra) if explicit and "traceparent" in extra else None
        token = otel_context.attach(parent) if parent is not None else None
        try:
            with publish_span(
                self.scheme,
                subject,
                headers=merged,
                message_id=msg_id,
                body_size=len(data),
                ctx=hop,
            ):
                return await self._store(subject, data, merged, msg_id)
        finally:
            if token is not None:
                otel_context.detach(token)

    def _next_hop(self) -> tuple[CallContext, dict[str, str]]:
        """The current call context one hop on, and its headers (a fresh dict).

        Publishes in a row usually share their context (a handler's, or none), so
        the last one's headers are reused while the context is equal and has no
        deadline (a deadline is checked on every publish).
        """
        ctx = CallContext.current()
        last = self._last_hop
        if last is not None and (last[0] is ctx or last[0] == ctx):
            return last[1], last[2].copy()
        hop = ctx.next_hop()
        wire = hop.to_headers()
        if wire.get(HEADER_MAX_HOPS) == _DEFAULT_MAX_HOPS:
            del wire[HEADER_MAX_HOPS]  # the default: decoding restores it; smaller on the wire
        if ctx.deadline is None:
            self._last_hop = (ctx, hop, wire.copy())
        return hop, wire

    async def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        queue: str | None = None,
        start: Start | str | int | float = "new",
        max_deliveries: int | None = None,
        backoff: Sequence[float] | None = None,
        ack_wait: float = 30.0,
        concurrency: int = 1,
    ) -> Subscription:
        """Run ``handler`` on every message matching ``pattern`` (``*``, ``>`` wildcards).

        Without ``queue`` this is a fan-out subscriber: it gets every message, and
        its state goes away when it closes. With ``queue="name"`` it joins a
        durable queue group: each message goes to one member, and the group keeps
        its place across restarts (``start`` only applies when the group is new).
        """
        self._check_open()
        pattern = validate_pattern(pattern)
        if queue is not None and not _GROUP.match(queue):
            raise InvalidInput(f"queue: expected 1-64 letters, digits, _ or -, got {queue!r}")
        if not 1 <= concurrency <= 1024:
            raise InvalidInput(f"concurrency must be between 1 and 1024, got {concurrency}")
        if not 0.05 <= ack_wait <= 86400:
            raise InvalidInput(f"ack_wait must be between 0.05 and 86400 seconds, got {ack_wait}")
        deliveries = self.max_deliveries if max_deliveries is None else max_deliveries
        if deliveries < 1:
            raise InvalidInput(f"max_deliveries must be >= 1, got {deliveries}")
        spec = ConsumerSpec(
            pattern=pattern,
            name=queue or f"fan-{uuid.uuid4().hex[:12]}",
            durable=queue is not None,
            start=Start.parse(start),
            ack_wait=float(ack_wait),
            max_deliveries=deliveries,
            backoff=check_backoff(backoff),
        )
        feed = await self._open_feed(spec)
        sub = Subscription(self, spec, feed, handler, concurrency)
        self._subscriptions.add(sub)
        sub._start()
        return sub
