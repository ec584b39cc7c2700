"""``memory://``: an in-process bus for unit tests.

Same semantics as the durable backends (a log with sequences, deduplication,
consumer cursors, leases that expire into redeliveries), kept in plain Python
structures owned by one :class:`MemoryBus`. Nothing survives the process; use
``embedded://`` for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from microhive.bus._bus import Bus
from microhive.bus._core import ConsumerSpec, Feed, PublishAck, Receipt, subject_matches
from microhive.errors import InvalidInput

__all__ = ["MemoryBus"]


@dataclass(slots=True)
class _Stored:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    msg_id: str
    ts: float


@dataclass(slots=True)
class _Lease:
    deliveries: int
    due: float


@dataclass(slots=True)
class _Consumer:
    pattern: str
    cursor: int
    pending: dict[int, _Lease] = field(default_factory=dict)


class _MemoryReceipt(Receipt):
    __slots__ = ("_consumer", "_feed")

    def __init__(self, feed: _MemoryFeed, consumer: _Consumer, msg: _Stored, deliveries: int):
        super().__init__(
            subject=msg.subject,
            data=msg.data,
            headers=msg.headers,
            msg_id=msg.msg_id,
            sequence=msg.seq,
            deliveries=deliveries,
            published_at=msg.ts,
        )
        self._feed = feed
        self._consumer = consumer

    async def ack(self) -> None:
        self._consumer.pending.pop(self.sequence, None)

    async def term(self) -> None:
        self._consumer.pending.pop(self.sequence, None)

    async def nak(self, delay: float) -> None:
        lease = self._consumer.pending.get(self.sequence)
        if lease is not None:
            lease.due = time.monotonic() + delay
            self._feed.bus._wake_all()

    async def touch(self) -> None:
        lease = self._consumer.pending.get(self.sequence)
        if lease is not None:
            lease.due = time.monotonic() + self._feed.spec.ack_wait


class _MemoryFeed(Feed):
    def __init__(self, bus: MemoryBus, spec: ConsumerSpec, consumer: _Consumer) -> None:
        self.bus = bus
        self.spec = spec
        self.consumer = consumer
        self.wake = asyncio.Event()

    def _claim(self, want: int) -> list[Receipt]:
        now = time.monotonic()
        out: list[Receipt] = []
        c = self.consumer
        for seq, lease in list(c.pending.items()):
            if len(out) >= want:
                break
            if lease.due <= now:
                lease.deliveries += 1
                lease.due = now + self.spec.ack_wait
                out.append(_MemoryReceipt(self, c, self.bus._log[seq - 1], lease.deliveries))
        log = self.bus._log
        while len(out) < want and c.cursor < len(log):
            msg = log[c.cursor]
            c.cursor += 1
            if subject_matches(c.pattern, msg.subject):
                c.pending[msg.seq] = _Lease(1, now + self.spec.ack_wait)
                out.append(_MemoryReceipt(self, c, msg, 1))
        return out

    async def fetch(self, max_messages: int, max_wait: float) -> list[Receipt]:
        deadline = time.monotonic() + max_wait
        while True:
            self.wake.clear()
            got = self._claim(max_messages)
            if got:
                return got
            now = time.monotonic()
            due = min((lease.due for lease in self.consumer.pending.values()), default=deadline)
            wait = min(deadline, due) - now
            if now >= deadline:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(wait, 0.001))

    async def pending(self) -> tuple[int | None, int | None]:
        c = self.consumer
        waiting = sum(1 for m in self.bus._log[c.cursor :] if subject_matches(c.pattern, m.subject))
        return waiting, len(c.pending)

    async def aclose(self, *, delete: bool) -> None:
        self.bus._feeds.discard(self)
        if delete:
            self.bus._consumers.pop(self.spec.name, None)


class MemoryBus(Bus):
    """In-process bus: the reference implementation of the contract, for tests."""

    scheme = "memory"

    def __init__(
        self, url: str = "memory://", *, dedup_window: float = 120.0, max_deliveries: int = 5
    ) -> None:
        super().__init__(url, dedup_window=dedup_window, max_deliveries=max_deliveries)
        self._log: list[_Stored] = []
        self._dedup: dict[str, tuple[int, float]] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._feeds: set[_MemoryFeed] = set()

    async def _connect(self) -> None:
        return None

    async def _disconnect(self) -> None:
        self._feeds.clear()

    async def ping(self) -> None:
        self._check_open()

    def _wake_all(self) -> None:
        for feed in self._feeds:
            feed.wake.set()

    async def _store(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str
    ) -> PublishAck:
        now = time.time()
        seen = self._dedup.get(msg_id)
        if seen is not None and seen[1] > now:
            return PublishAck(subject, seen[0], msg_id, duplicate=True)
        if len(self._dedup) > 100_000:
            self._dedup = {k: v for k, v in self._dedup.items() if v[1] > now}
        seq = len(self._log) + 1
        self._log.append(_Stored(seq, subject, data, dict(headers), msg_id, now))
        self._dedup[msg_id] = (seq, now + self.dedup_window)
        self._wake_all()
        return PublishAck(subject, seq, msg_id)

    async def _open_feed(self, spec: ConsumerSpec) -> Feed:
        consumer = self._consumers.get(spec.name)
        if consumer is None:
            consumer = _Consumer(spec.pattern, self._start_cursor(spec))
            self._consumers[spec.name] = consumer
        elif consumer.pattern != spec.pattern:
            raise InvalidInput(
                f"queue group {spec.name!r} already subscribes to {consumer.pattern!r}, "
                f"not {spec.pattern!r}"
            )
        feed = _MemoryFeed(self, spec, consumer)
        self._feeds.add(feed)
        return feed

    def _start_cursor(self, spec: ConsumerSpec) -> int:
        start = spec.start
        if start.kind == "beginning":
            return 0
        if start.kind == "sequence" and start.sequence is not None:
            return min(start.sequence - 1, len(self._log))
        if start.kind == "time" and start.time is not None:
            return next((m.seq - 1 for m in self._log if m.ts >= start.time), len(self._log))
        return len(self._log)
