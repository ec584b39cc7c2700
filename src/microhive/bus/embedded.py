"""``embedded://PATH``: a durable bus shared by the processes of one machine, no server.

Why SQLite in WAL mode rather than a hand-written append-only log: the bus needs
more than appending. Queue groups need *shared* consumer state (a cursor, which
member holds which message, until when, how often it was delivered) that several
processes update concurrently and that must survive any of them being killed.
SQLite gives exactly that -- atomic multi-row transactions across processes, a
crash-safe WAL, and a file lock serialising writers -- where a bespoke log would
have to re-invent locking, torn-write recovery and compaction.

Durability: a publish is acknowledged only after the transaction holding it has
committed and the WAL has been fsynced, so neither a SIGKILL of any process nor
a power cut loses an acknowledged message. The fsync runs after the write lock
is released (:class:`~microhive.bus._embedded_log.LogThread`), so one process's
fsync does not hold up the others' transactions; an fsync of the WAL makes every
transaction committed before it durable, whoever committed it. Consumers may see
a message from its commit on, a moment before that fsync (as a broker may
deliver before it has replicated): a power cut in that moment can take back a
message its publisher was never told was stored, and a consumer that already
acted on it has acted at least once -- which at-least-once delivery allows. Transactions that
only move consumer state (claims, acks, naks) are not fsynced: they survive a
killed process too, and after a power cut at worst a message is delivered once
more -- which at-least-once delivery allows anyway. Concurrent operations of one
process are grouped into one transaction by a single thread (group commit), which
is what makes thousands of acknowledged publishes per second possible with one
fsync per batch.

Acks are sent, not confirmed (as with NATS): an ack is stored with the
consumer's next claim -- one transaction takes the finished message off the
member and hands it the next -- or within ``_ACK_FLUSH`` s when no claim comes.
A process killed in between has its messages delivered again, as it would if it
had been killed just before acking.

Wake-ups: consumers do not spin. Each consumer binds a Unix datagram socket in a
per-database folder under the temp dir, named for the pattern it takes; once a
publish is durable the writer sends one byte to the sockets whose pattern matches
the subject (stale ones are removed), so a publish wakes only the processes that
take it. A slow poll (``_POLL`` s) remains as a safety net. Idle polls only read:
they take no lock and write nothing.

Schema (all in ``PATH/bus.db``):

* ``messages(seq, subject, msg_id, headers, data, ts)`` -- the log; ``seq`` is the
  publish sequence.
* ``dedup(msg_id, seq, expires)`` -- message ids seen within the dedup window.
* ``consumers(name, pattern, cursor, durable, seen)`` -- one row per queue group or
  fan-out subscriber; ``cursor`` is the last sequence it has looked at.
* ``pending(consumer, seq, deliveries, due)`` -- messages handed out but not yet
  acked; when ``due`` passes (ack wait over, or a nak's delay elapsed) any member
  may claim it again, with ``deliveries`` + 1.

Retention: messages older than ``?retention=SECONDS`` (default 7 days) are
removed by housekeeping, as are fan-out consumers not seen for 10 minutes (their
process died without closing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from microhive.bus._bus import Bus
from microhive.bus._core import ConsumerSpec, Feed, PublishAck, Receipt, subject_matches
from microhive.bus._embedded_log import DURABLE, READ, WRITE, Check, LogThread
from microhive.bus._embedded_ops import (
    FANOUT_STALE,
    check_claim,
    housekeeping,
    op_claim,
    op_drop_consumer,
    op_open_consumer,
    op_pending,
    op_ping,
    op_publish,
    op_settle,
)
from microhive.errors import InvalidInput, ServiceUnavailable

__all__ = ["EmbeddedBus"]

log = logging.getLogger("microhive.bus")

_POLL = 0.5
#: Longest wake socket path used (Linux allows 107 bytes).
_MAX_SOCKET_PATH = 100
#: Longest an ack waits for the consumer's next claim to carry it.
_ACK_FLUSH = 0.002


# --------------------------------------------------------------- asyncio side


class _EmbeddedReceipt(Receipt):
    __slots__ = ("_feed",)

    def __init__(self, feed: _EmbeddedFeed, row: tuple[Any, ...]) -> None:
        seq, subject, data, headers, msg_id, ts, deliveries = row
        super().__init__(
            subject=subject,
            data=bytes(data),
            headers=json.loads(headers),
            msg_id=msg_id,
            sequence=seq,
            deliveries=deliveries,
            published_at=ts,
        )
        self._feed = feed

    async def _settle(self, due: float | None) -> None:
        name = self._feed.spec.name
        await self._feed.bus._call(op_settle, name, (self.sequence,), due, inline=True)

    async def ack(self) -> None:
        self._feed.defer_ack(self.sequence)

    async def term(self) -> None:
        await self._settle(None)

    async def nak(self, delay: float) -> None:
        await self._settle(time.time() + delay)
        if delay <= 0:
            self._feed.wake.set()

    async def touch(self) -> None:
        await self._settle(time.time() + self._feed.spec.ack_wait)


class _EmbeddedFeed(Feed):
    def __init__(self, bus: EmbeddedBus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.wake = asyncio.Event()
        self._touched = time.monotonic()
        self._sock: socket.socket | None = bus.listen(spec.pattern)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_wake)
        self._acks: list[int] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    def _on_wake(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            while self._sock.recv(64):
                pass
        self.wake.set()

    def stop_listening(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        with contextlib.suppress(OSError):
            os.unlink(sock.getsockname())
        sock.close()

    def defer_ack(self, sequence: int) -> None:
        """Ack with the next claim, or on its own within ``_ACK_FLUSH`` s."""
        self._acks.append(sequence)
        self._arm_flush()

    def _arm_flush(self) -> None:
        if self._flush_timer is None and self._acks:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(_ACK_FLUSH, self._flush_later)

    def _take_acks(self) -> tuple[int, ...]:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        acks, self._acks = tuple(self._acks), []
        return acks

    def _flush_later(self) -> None:
        self._flush_timer = None
        task = asyncio.get_running_loop().create_task(self.flush_acks())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush_acks(self) -> None:
        acks = self._take_acks()
        if not acks or self.bus._closed_worker:
            return
        try:
            await self.bus._call(op_settle, self.spec.name, acks, None, inline=True)
        except ServiceUnavailable as exc:  # the leases expire: delivered again
            log.warning("bus consumer %s: %d acks not stored: %s", self.spec.name, len(acks), exc)

    async def fetch(self, max_messages: int, max_wait: float) -> list[Receipt]:
        deadline = time.monotonic() + max_wait
        while True:
            self.wake.clear()
            touch = time.monotonic() - self._touched > FANOUT_STALE / 10
            if touch:  # tell housekeeping this consumer is alive
                self._touched = time.monotonic()
            acks = self._take_acks()
            try:
                rows, next_due = await self.bus._call(
                    op_claim,
                    self.spec.name,
                    self.spec.pattern,
                    max_messages,
                    self.spec.ack_wait,
                    touch,
                    acks,
                    check=None if acks else check_claim,  # acks are a write anyway
                    inline=True,
                )
            except BaseException:
                self._acks[:0] = acks  # not stored: they go with the next try
                self._arm_flush()
                raise
            if rows:
                return [_EmbeddedReceipt(self, row) for row in rows]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wait = min(left, _POLL)
            if next_due is not None:
                wait = min(wait, max(next_due - time.time(), 0.001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)

    async def pending(self) -> tuple[int | None, int | None]:
        await self.flush_acks()
        waiting, unacked = await self.bus._call(
            op_pending, self.spec.name, self.spec.pattern, mode=READ
        )
        return waiting, unacked

    async def aclose(self, *, delete: bool) -> None:
        self.bus._feeds.discard(self)
        self.stop_listening()
        if self.bus._closed_worker:
            return
        with contextlib.suppress(ServiceUnavailable):
            await self.flush_acks()
            if delete:
                await self.bus._call(op_drop_consumer, self.spec.name)


class EmbeddedBus(Bus):
    """Durable bus in a SQLite file, shared by the local processes that open the same PATH.

    URL: ``embedded://PATH`` (relative to the working directory, or
    ``embedded:///abs/path``); query options ``retention`` (seconds).
    """

    scheme = "embedded"

    def __init__(self, url: str, *, dedup_window: float = 120.0, max_deliveries: int = 5) -> None:
        super().__init__(url, dedup_window=dedup_window, max_deliveries=max_deliveries)
        parts = urlsplit(url)
        raw = (parts.netloc + parts.path) or ".microhive/bus"
        self.directory = Path(raw).expanduser().absolute()
        query = parse_qs(parts.query)
        try:
            self.retention = float(query.get("retention", ["604800"])[0])
        except ValueError:
            raise InvalidInput(f"bus url {url!r}: retention must be a number of seconds") from None
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
        self.wake_dir = Path(tempfile.gettempdir()) / f"microhive-bus-{digest}"
        self._worker: LogThread | None = None
        self._feeds: set[_EmbeddedFeed] = set()
        self._closed_worker = False

    @property
    def db_path(self) -> Path:
        return self.directory / "bus.db"

    async def _connect(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.wake_dir.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ServiceUnavailable(
                f"embedded bus: cannot create {self.directory}: {exc}"
            ) from exc
        loop = asyncio.get_running_loop()
        worker = LogThread(self.db_path, loop, self._notify)
        worker.housekeep = housekeeping(self.retention)
        worker.start()
        self._worker = worker
        await worker.ready

    def listen(self, pattern: str) -> socket.socket:
        """A datagram socket in the wake folder, named for the pattern it waits on."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        path = self.wake_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{pattern}"
        if len(bytes(path)) > _MAX_SOCKET_PATH:  # too long to name: wake on every publish
            path = path.with_name(path.name.rsplit("-", 1)[0] + "->")
        try:
            try:
                sock.bind(str(path))
            except FileNotFoundError:  # another bus just removed the empty folder
                self.wake_dir.mkdir(exist_ok=True, mode=0o700)
                sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        return sock

    def _notify(self, subjects: set[str] | None = None) -> None:
        """Wake the consumers whose pattern matches one of ``subjects`` (None: all).

        Runs on the bus thread as a publish commits. A socket whose process is
        gone is removed.
        """
        folder = str(self.wake_dir)
        try:
            names = os.listdir(folder)
        except OSError:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for name in names:
                pattern = name.split("-", 2)[2] if name.count("-") >= 2 else ">"
                if subjects is not None and not any(subject_matches(pattern, s) for s in subjects):
                    continue
                target = os.path.join(folder, name)
                try:
                    out.sendto(b"!", target)
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        os.unlink(target)
                except OSError:
                    pass  # buffer full: that consumer is awake anyway

    async def _disconnect(self) -> None:
        for feed in list(self._feeds):  # acks not yet stored
            with contextlib.suppress(ServiceUnavailable):
                await feed.flush_acks()
            feed.stop_listening()
        self._notify()  # removes the sockets of processes that died
        with contextlib.suppress(OSError):  # the last bus out removes the folder
            self.wake_dir.rmdir()
        if self._worker is not None:
            self._worker.stop()
            await asyncio.to_thread(self._worker.join)
        self._closed_worker = True

    async def _call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        mode: int = WRITE,
        check: Check | None = None,
        inline: bool = False,
    ) -> Any:
        if self._worker is None or self._closed_worker:
            raise ServiceUnavailable(f"bus {self.url} is closed")
        return await self._worker.call(fn, *args, mode=mode, check=check, inline=inline)

    async def ping(self) -> None:
        await self._call(op_ping, mode=READ)

    async def _store(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str
    ) -> PublishAck:
        encoded = json.dumps(headers, separators=(",", ":"))
        seq, duplicate = await self._call(
            op_publish, subject, data, encoded, msg_id, self.dedup_window, mode=DURABLE
        )
        return PublishAck(subject, seq, msg_id, duplicate)

    async def _open_feed(self, spec: ConsumerSpec) -> Feed:
        await self._call(op_open_consumer, spec)
        feed = _EmbeddedFeed(self, spec)
        self._feeds.add(feed)
        return feed
