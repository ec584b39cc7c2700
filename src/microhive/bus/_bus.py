"""The bus interface and the delivery logic every backend shares.

Backends only store messages and hand out deliveries (:mod:`._core`). This
module turns deliveries into handler calls with one set of rules:

* the handler runs inside the message's :class:`CallContext`, so anything it
  publishes carries the same trace and one hop fewer;
* a message that arrives with no hops left, past its deadline, with malformed
  context headers or a JSON body that does not parse is *not* handed to the
  handler: it goes straight to the dead-letter subject with the reason;
* returning normally acks; raising naks with the subscription's backoff; after
  ``max_deliveries`` attempts the message is dead-lettered with its delivery
  history; raising :class:`InvalidInput` (the message itself is bad) or a
  :class:`Stop` dead-letters at once, since retrying cannot help.

Dead letters go to ``dlq.<subject>`` with the original payload and headers (so
the trace id survives) plus ``microhive-dlq-*`` headers saying why. Their
message id is derived from the consumer and the original id, so a consumer that
crashes between dead-lettering and settling does not store two copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from microhive.bus._core import (
    CONTENT_TYPE,
    HEADER_MSG_ID,
    ConsumerSpec,
    Feed,
    PublishAck,
    Receipt,
    Start,
    check_backoff,
    encode_payload,
    validate_headers,
    validate_msg_id,
    validate_pattern,
    validate_subject,
)
from microhive.context import (
    DEFAULT_MAX_HOPS,
    HEADER_BUDGET_STEPS,
    HEADER_BUDGET_TOKENS,
    HEADER_DEADLINE,
    HEADER_HOPS,
    HEADER_MAX_HOPS,
    CallContext,
)
from microhive.errors import InvalidContext, InvalidInput, ServiceUnavailable, Stop

__all__ = ["DLQ_PREFIX", "Bus", "Delivery", "Handler", "Subscription"]

log = logging.getLogger("microhive.bus")

DLQ_PREFIX = "dlq."
_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HISTORY_KEEP = 20
_HISTORY_TRACKED = 10_000

Handler = Callable[["Delivery"], Awaitable[None]]


class Delivery:
    """One delivery of a message to a handler, with the means to settle it.

    Settle at most once; returning from the handler without settling acks.
    """

    __slots__ = ("_receipt", "_settled", "_sub", "context")

    def __init__(self, sub: Subscription, receipt: Receipt, context: CallContext) -> None:
        self._sub = sub
        self._receipt = receipt
        self._settled = False
        self.context = context

    subject = property(lambda self: self._receipt.subject)
    data = property(lambda self: self._receipt.data)
    headers = property(lambda self: self._receipt.headers)
    msg_id = property(lambda self: self._receipt.msg_id)
    sequence = property(lambda self: self._receipt.sequence)
    #: This is delivery number N of the message to this consumer (1 = first time).
    deliveries = property(lambda self: self._receipt.deliveries)
    published_at = property(lambda self: self._receipt.published_at)

    def json(self) -> Any:
        """The payload parsed as JSON; :class:`InvalidInput` (dead-letters) if it is not."""
        try:
            return json.loads(self._receipt.data)
        except ValueError as exc:
            raise InvalidInput(f"payload of {self.subject!r} is not valid JSON: {exc}") from None

    def text(self) -> str:
        try:
            return self._receipt.data.decode()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"payload of {self.subject!r} is not UTF-8: {exc}") from None

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if not self._claim():
            return
        await self._receipt.ack()
        self._sub.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        """Deliver again after ``delay`` (default: the subscription's backoff)."""
        if not self._claim():
            return
        spec = self._sub.spec
        if self._receipt.deliveries >= spec.max_deliveries:
            await self._sub._dead_letter(
                self._receipt,
                f"max deliveries ({spec.max_deliveries}) reached: nak",
                "max_deliveries",
            )
            return
        await self._receipt.nak(
            spec.delay_after(self._receipt.deliveries) if delay is None else delay
        )

    async def term(self, reason: str = "terminated by the handler") -> None:
        """Stop delivering this message; it goes to the dead-letter subject with ``reason``."""
        if not self._claim():
            return
        await self._sub._dead_letter(self._receipt, reason, "terminated")

    async def in_progress(self) -> None:
        """Still working: push back the ack deadline so no other member gets it."""
        if not self._settled:
            await self._receipt.touch()

    def _claim(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True


class Subscription:
    """A running consumer: fetches deliveries and runs the handler on them."""

    def __init__(
        self, bus: Bus, spec: ConsumerSpec, feed: Feed, handler: Handler, concurrency: int
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._feed = feed
        self._handler = handler
        self._concurrency = concurrency
        # Fetch again only once a quarter of the slots are free: one round trip
        # then brings a batch instead of one message per finished handler.
        self._low_water = max(1, concurrency // 4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._history: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._runner: asyncio.Task[None] | None = None
        self.received = self.acked = self.failed = self.dead_lettered = 0

    @property
    def pattern(self) -> str:
        return self.spec.pattern

    @property
    def queue(self) -> str | None:
        return self.spec.name if self.spec.durable else None

    def _start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"bus:{self.spec.name}")

    async def _run(self) -> None:
        pause = 0.05
        while not self._closing:
            await self._room.wait()
            free = self._concurrency - len(self._tasks)
            try:
                batch = await self._feed.fetch(free, max_wait=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # backend down: keep trying, do not die
                log.warning("bus consumer %s: fetch failed (%s); retrying", self.spec.name, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            for receipt in batch:
                self.received += 1
                task = asyncio.create_task(self._process_safely(receipt))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if self._concurrency - len(self._tasks) < self._low_water:
                self._room.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._concurrency - len(self._tasks) >= self._low_water:
            self._room.set()

    async def _process_safely(self, receipt: Receipt) -> None:
        try:
            await self._process(receipt)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(receipt.nak(0))
            raise
        except Exception:  # settling failed (backend down): the lease expires, redelivery
            log.exception("bus consumer %s: could not settle %s", self.spec.name, receipt.msg_id)

    async def _process(self, r: Receipt) -> None:
        spec = self.spec
        if r.deliveries > spec.max_deliveries:
            reason = (
                f"max deliveries ({spec.max_deliveries}) reached; the last attempt did not finish"
            )
            return await self._dead_letter(r, reason, "max_deliveries")
        try:
            ctx = _decode_context(r.headers)
        except InvalidContext as exc:
            if r.subject.startswith(DLQ_PREFIX):  # dead letters are delivered as they are
                ctx = CallContext()
            else:
                return await self._dead_letter(r, f"malformed headers: {exc.message}", exc.code)
        if not r.subject.startswith(DLQ_PREFIX):
            try:
                ctx.check()
            except Stop as exc:
                return await self._dead_letter(r, exc.message, exc.code)
            if r.headers.get(CONTENT_TYPE) == "application/json":
                try:
                    json.loads(r.data)
                except ValueError as exc:
                    reason = f"malformed payload: invalid JSON ({exc})"
                    return await self._dead_letter(r, reason, "invalid_input")
        delivery = Delivery(self, r, ctx)
        try:
            with ctx.activate():
                await self._handler(delivery)
        except (InvalidInput, Stop) as exc:
            self._record(r, exc)
            if not delivery._claim():
                return
            await self._dead_letter(r, f"{exc.code}: {exc.message}", exc.code)
        except Exception as exc:
            self.failed += 1
            self._record(r, exc)
            if not delivery._claim():
                return
            if r.deliveries >= spec.max_deliveries:
                reason = (
                    f"max deliveries ({spec.max_deliveries}) reached; last error: {_describe(exc)}"
                )
                await self._dead_letter(r, reason, "max_deliveries")
            else:
                await r.nak(spec.delay_after(r.deliveries))
        else:
            if delivery._claim():
                await r.ack()
                self.acked += 1

    def _record(self, r: Receipt, exc: BaseException) -> None:
        attempts = self._history.setdefault(r.sequence, [])
        self._history.move_to_end(r.sequence)
        attempts.append(
            {
                "attempt": r.deliveries,
                "at": round(time.time(), 3),
                "member": self.member,
                "error": _describe(exc),
            }
        )
        while len(self._history) > _HISTORY_TRACKED:
            self._history.popitem(last=False)

    async def _dead_letter(self, r: Receipt, reason: str, code: str) -> None:
        history = self._history.pop(r.sequence, [])[-_HISTORY_KEEP:]
        if r.subject.startswith(DLQ_PREFIX):
            # A dead letter its own consumer cannot handle stays where it is (in the
            # log, readable by `microhive events dlq`); re-dead-lettering would loop.
            await r.term()
            log.error(
                "dead letter %s on %s not handled by %s: %s",
                r.msg_id,
                r.subject,
                self.spec.name,
                reason,
            )
            return
        headers = dict(r.headers)
        headers.update(
            {
                "microhive-dlq-reason": reason.replace("\r", " ").replace("\n", " ")[:1000],
                "microhive-dlq-code": code,
                "microhive-dlq-subject": r.subject,
                "microhive-dlq-sequence": str(r.sequence),
                "microhive-dlq-msg-id": r.msg_id,
                "microhive-dlq-consumer": self.spec.name,
                "microhive-dlq-deliveries": str(r.deliveries),
                "microhive-dlq-at": repr(time.time()),
                "microhive-dlq-history": json.dumps(history, separators=(",", ":"))[:4000],
            }
        )
        dlq_id = f"dlq:{self.spec.name}:{r.msg_id}"[:256]
        headers[HEADER_MSG_ID] = dlq_id
        await self.bus._store(DLQ_PREFIX + r.subject, r.data, headers, dlq_id)
        await r.term()
        self.dead_lettered += 1
        log.warning("dead-lettered %s on %s: %s", r.msg_id, r.subject, reason)

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop fetching, let running handlers finish (up to ``grace`` s), release the feed."""
        if self._closing:
            return
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await self._feed.aclose(delete=not self.spec.durable)
        self.bus._subscriptions.discard(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_CONTEXT_HEADERS = frozenset(
    ("traceparent", "tracestate", HEADER_HOPS, HEADER_MAX_HOPS, HEADER_DEADLINE,
     HEADER_BUDGET_STEPS, HEADER_BUDGET_TOKENS)
)  # fmt: skip
_CONTEXT_KEYS = tuple(sorted(_CONTEXT_HEADERS))
_DEFAULT_MAX_HOPS = str(DEFAULT_MAX_HOPS)


@functools.lru_cache(maxsize=1024)
def _decode_cached(values: tuple[str | None, ...]) -> CallContext:
    return CallContext.from_headers(
        {k: v for k, v in zip(_CONTEXT_KEYS, values, strict=True) if v is not None}
    )


def _decode_context(headers: Mapping[str, str]) -> CallContext:
    """Decode the call context of a delivery.

    Events of one trace share their carrier values, and decoding runs the
    OpenTelemetry propagator; the (immutable) result is cached by those values.
    """
    return _decode_cached(tuple(headers.get(k) for k in _CONTEXT_KEYS))


def _describe(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


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
        """Store durably (deduplicating ``msg_id`` within the window), then return."""

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
        merged = CallContext.current().next_hop().to_headers()
        if merged.get(HEADER_MAX_HOPS) == _DEFAULT_MAX_HOPS:
            del merged[HEADER_MAX_HOPS]  # the default: decoding restores it; smaller on the wire
        if content_type is not None:
            merged[CONTENT_TYPE] = content_type
        extra = validate_headers(headers)
        merged.update(extra)
        if any(k in _CONTEXT_HEADERS for k in extra):
            CallContext.from_headers(merged)  # malformed context headers -> InvalidContext now
        merged[HEADER_MSG_ID] = msg_id
        return await self._store(subject, data, merged, msg_id)

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
