"""``embedded://PATH``: a durable bus shared by the processes of one machine, no server.

Why SQLite in WAL mode rather than a hand-written append-only log: the bus needs
more than appending. Queue groups need *shared* consumer state (a cursor, which
member holds which message, until when, how often it was delivered) that several
processes update concurrently and that must survive any of them being killed.
SQLite gives exactly that -- atomic multi-row transactions across processes, a
crash-safe WAL, and a file lock serialising writers -- where a bespoke log would
have to re-invent locking, torn-write recovery and compaction.

Durability: a publish is acknowledged only after the transaction holding it has
committed with ``synchronous=FULL`` (the WAL is fsynced), so neither a SIGKILL
of any process nor a power cut loses an acknowledged message. Transactions that
only move consumer state (claims, acks, naks) commit with ``synchronous=NORMAL``:
they survive a killed process too, and after a power cut at worst a message is
delivered once more -- which at-least-once delivery allows anyway. Concurrent
operations of one process are grouped into one transaction by a single worker
thread (group commit), which is what makes thousands of acknowledged publishes
per second possible with one fsync per batch.

Wake-ups: consumers do not spin. Each bus instance binds a Unix datagram socket
in a per-database folder under the temp dir; after committing a publish the
writer sends one byte to every socket there (stale ones are removed). A slow
poll (``_POLL`` s) remains as a safety net.

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
import os
import queue
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from microhive.bus._bus import Bus
from microhive.bus._core import ConsumerSpec, Feed, PublishAck, Receipt, subject_matches
from microhive.errors import InvalidInput, ServiceUnavailable

__all__ = ["EmbeddedBus"]

_POLL = 0.5
_SCAN = 512
_HOUSEKEEP_EVERY = 30.0
_FANOUT_STALE = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    headers TEXT NOT NULL,
    data BLOB NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ts ON messages(ts);
CREATE TABLE IF NOT EXISTS dedup (
    msg_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY, pattern TEXT NOT NULL, cursor INTEGER NOT NULL,
    durable INTEGER NOT NULL, seen REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    consumer TEXT NOT NULL, seq INTEGER NOT NULL, deliveries INTEGER NOT NULL, due REAL NOT NULL,
    PRIMARY KEY (consumer, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_due ON pending(consumer, due);
"""

_Op = tuple[Callable[..., Any], tuple[Any, ...], bool, "asyncio.Future[Any]"]


class _Worker(threading.Thread):
    """Owns the SQLite connection; runs queued operations in grouped transactions."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, on_publish: Callable[[], None]):
        super().__init__(name=f"microhive-bus:{path}", daemon=True)
        self.path = path
        self.loop = loop
        self.on_publish = on_publish
        self.ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.conn: sqlite3.Connection | None = None
        self.housekeep: Callable[[sqlite3.Connection, float], None] | None = None
        self._last_housekeeping = 0.0

    def call(
        self, fn: Callable[..., Any], *args: Any, publish: bool = False
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.ops.put((fn, args, publish, fut))
        return fut

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(_SCHEMA)
            self.conn = conn
        except sqlite3.Error as exc:
            self._resolve(
                [(self.ready, None, ServiceUnavailable(f"embedded bus {self.path}: {exc}"))]
            )
            return
        self._resolve([(self.ready, None, None)])
        try:
            while (first := self.ops.get()) is not None:
                batch = [first]
                stop = False
                while len(batch) < 256:
                    try:
                        item = self.ops.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._run_batch(conn, batch)
                if stop:
                    break
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        durable = any(op[2] for op in batch)
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, _, fut in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((fut, fn(conn, *args), None))
                    conn.execute("RELEASE op")
                except (sqlite3.Error, InvalidInput) as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((fut, None, _convert(exc)))
            now = time.time()
            if self.housekeep is not None and now - self._last_housekeeping > _HOUSEKEEP_EVERY:
                self._last_housekeeping = now
                self.housekeep(conn, now)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _convert(exc)
            results = [(op[3], None, error) for op in batch]
        self._resolve(results)
        if durable:
            self.on_publish()

    def _resolve(
        self, results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        def settle() -> None:
            for fut, value, error in results:
                if fut.done():
                    continue
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(value)

        with contextlib.suppress(RuntimeError):  # loop already closed
            self.loop.call_soon_threadsafe(settle)


def _convert(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        return ServiceUnavailable(f"embedded bus: {exc}")
    return exc


# --------------------------------------------------------------- operations (worker thread)


def _op_publish(
    conn: sqlite3.Connection, subject: str, data: bytes, headers: str, msg_id: str, window: float
) -> tuple[int, bool]:
    now = time.time()
    row = conn.execute("SELECT seq, expires FROM dedup WHERE msg_id = ?", (msg_id,)).fetchone()
    if row is not None and row[1] > now:
        return int(row[0]), True
    cur = conn.execute(
        "INSERT INTO messages(subject, msg_id, headers, data, ts) VALUES (?, ?, ?, ?, ?)",
        (subject, msg_id, headers, data, now),
    )
    seq = int(cur.lastrowid or 0)
    conn.execute(
        "INSERT OR REPLACE INTO dedup(msg_id, seq, expires) VALUES (?, ?, ?)",
        (msg_id, seq, now + window),
    )
    return seq, False


def _op_open_consumer(conn: sqlite3.Connection, spec: ConsumerSpec) -> None:
    row = conn.execute("SELECT pattern FROM consumers WHERE name = ?", (spec.name,)).fetchone()
    if row is not None:
        if row[0] != spec.pattern:
            raise InvalidInput(
                f"queue group {spec.name!r} already subscribes to {row[0]!r}, not {spec.pattern!r}"
            )
        return
    last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
    start = spec.start
    if start.kind == "beginning":
        cursor = 0
    elif start.kind == "sequence" and start.sequence is not None:
        cursor = min(start.sequence - 1, last)
    elif start.kind == "time" and start.time is not None:
        before = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE ts < ?", (start.time,)
        ).fetchone()[0]
        cursor = int(before)
    else:
        cursor = last
    conn.execute(
        "INSERT INTO consumers(name, pattern, cursor, durable, seen) VALUES (?, ?, ?, ?, ?)",
        (spec.name, spec.pattern, cursor, int(spec.durable), time.time()),
    )


def _op_claim(
    conn: sqlite3.Connection, name: str, pattern: str, want: int, ack_wait: float, touch: bool
) -> tuple[list[tuple[Any, ...]], float | None]:
    """Hand out up to ``want`` messages: expired leases first, then new ones."""
    now = time.time()
    claimed: list[tuple[int, int]] = []  # (seq, deliveries)
    for seq, deliveries in conn.execute(
        "SELECT seq, deliveries FROM pending WHERE consumer = ? AND due <= ? ORDER BY due LIMIT ?",
        (name, now, want),
    ).fetchall():
        claimed.append((seq, deliveries + 1))
    conn.executemany(
        "UPDATE pending SET deliveries = ?, due = ? WHERE consumer = ? AND seq = ?",
        [(d, now + ack_wait, name, s) for s, d in claimed],
    )
    row = conn.execute("SELECT cursor FROM consumers WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise InvalidInput(f"consumer {name!r} no longer exists (removed as stale?)")
    cursor = int(row[0])
    fresh: list[int] = []
    while len(claimed) + len(fresh) < want:
        rows = conn.execute(
            "SELECT seq, subject FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, _SCAN)
        ).fetchall()
        if not rows:
            break
        for seq, subject in rows:
            cursor = seq
            if subject_matches(pattern, subject):
                fresh.append(seq)
                if len(claimed) + len(fresh) >= want:
                    break
    conn.executemany(
        "INSERT OR REPLACE INTO pending(consumer, seq, deliveries, due) VALUES (?, ?, 1, ?)",
        [(name, s, now + ack_wait) for s in fresh],
    )
    if cursor != int(row[0]) or touch:  # an idle poll writes nothing
        conn.execute(
            "UPDATE consumers SET cursor = ?, seen = ? WHERE name = ?", (cursor, now, name)
        )
    claimed.extend((s, 1) for s in fresh)
    out: list[tuple[Any, ...]] = []
    if claimed:
        counts = dict(claimed)
        marks = ",".join("?" * len(counts))
        for r in conn.execute(
            f"SELECT seq, subject, data, headers, msg_id, ts FROM messages WHERE seq IN ({marks})",
            list(counts),
        ).fetchall():
            out.append((*r, counts.pop(r[0])))
        for gone in counts:  # removed by retention: nothing left to deliver
            conn.execute("DELETE FROM pending WHERE consumer = ? AND seq = ?", (name, gone))
        out.sort(key=lambda r: r[0])
    next_due = conn.execute("SELECT MIN(due) FROM pending WHERE consumer = ?", (name,)).fetchone()[
        0
    ]
    return out, next_due


def _op_settle(conn: sqlite3.Connection, name: str, seq: int, due: float | None) -> None:
    if due is None:
        conn.execute("DELETE FROM pending WHERE consumer = ? AND seq = ?", (name, seq))
    else:
        conn.execute("UPDATE pending SET due = ? WHERE consumer = ? AND seq = ?", (due, name, seq))


def _op_pending(conn: sqlite3.Connection, name: str, pattern: str) -> tuple[int, int]:
    """(messages after the consumer's cursor matching its pattern, its unsettled leases)."""
    row = conn.execute("SELECT cursor FROM consumers WHERE name = ?", (name,)).fetchone()
    if row is None:
        return 0, 0
    waiting = sum(
        count
        for subject, count in conn.execute(
            "SELECT subject, COUNT(*) FROM messages WHERE seq > ? GROUP BY subject", (row[0],)
        )
        if subject_matches(pattern, subject)
    )
    unacked = conn.execute("SELECT COUNT(*) FROM pending WHERE consumer = ?", (name,)).fetchone()
    return waiting, int(unacked[0])


def _op_drop_consumer(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM pending WHERE consumer = ?", (name,))
    conn.execute("DELETE FROM consumers WHERE name = ?", (name,))


def _housekeep(retention: float) -> Callable[[sqlite3.Connection, float], None]:
    def run(conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM dedup WHERE expires < ?", (now,))
        conn.execute("DELETE FROM messages WHERE ts < ?", (now - retention,))
        for (name,) in conn.execute(
            "SELECT name FROM consumers WHERE durable = 0 AND seen < ?", (now - _FANOUT_STALE,)
        ).fetchall():
            _op_drop_consumer(conn, name)

    return run


def _op_ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


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
        await self._feed.bus._call(_op_settle, self._feed.spec.name, self.sequence, due)

    async def ack(self) -> None:
        await self._settle(None)

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

    async def fetch(self, max_messages: int, max_wait: float) -> list[Receipt]:
        deadline = time.monotonic() + max_wait
        while True:
            self.wake.clear()
            touch = time.monotonic() - self._touched > _FANOUT_STALE / 10
            if touch:  # tell housekeeping this consumer is alive
                self._touched = time.monotonic()
            rows, next_due = await self.bus._call(
                _op_claim,
                self.spec.name,
                self.spec.pattern,
                max_messages,
                self.spec.ack_wait,
                touch,
            )
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
        waiting, unacked = await self.bus._call(_op_pending, self.spec.name, self.spec.pattern)
        return waiting, unacked

    async def aclose(self, *, delete: bool) -> None:
        self.bus._feeds.discard(self)
        if delete and not self.bus._closed_worker:
            with contextlib.suppress(ServiceUnavailable):
                await self.bus._call(_op_drop_consumer, self.spec.name)


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
        self._worker: _Worker | None = None
        self._feeds: set[_EmbeddedFeed] = set()
        self._sock: socket.socket | None = None
        self._sock_path: Path | None = None
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
        self._listen(loop)
        worker = _Worker(self.db_path, loop, self._notify)
        worker.housekeep = _housekeep(self.retention)
        worker.start()
        self._worker = worker
        await worker.ready

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        path = self.wake_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            sock.bind(str(path))
        except FileNotFoundError:  # another bus just removed the empty folder
            self.wake_dir.mkdir(exist_ok=True, mode=0o700)
            sock.bind(str(path))
        self._sock, self._sock_path = sock, path
        loop.add_reader(sock.fileno(), self._on_wake)

    def _on_wake(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError):
            while self._sock.recv(64):
                pass
        for feed in self._feeds:
            feed.wake.set()

    def _notify(self) -> None:
        """Runs on the worker thread after a publish commits: wake every listening bus."""
        try:
            names = os.listdir(self.wake_dir)
        except OSError:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for name in names:
                target = self.wake_dir / name
                try:
                    out.sendto(b"!", str(target))
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        target.unlink()
                except OSError:
                    pass  # buffer full: that bus is awake anyway

    async def _disconnect(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            if self._sock_path is not None:
                with contextlib.suppress(OSError):
                    self._sock_path.unlink()
                self._notify()  # also removes the sockets of processes that died
                with contextlib.suppress(OSError):  # the last bus out removes the folder
                    self.wake_dir.rmdir()
        if self._worker is not None:
            self._worker.ops.put(None)
            await asyncio.to_thread(self._worker.join)
        self._closed_worker = True

    async def _call(self, fn: Callable[..., Any], *args: Any, publish: bool = False) -> Any:
        if self._worker is None or self._closed_worker:
            raise ServiceUnavailable(f"bus {self.url} is closed")
        return await self._worker.call(fn, *args, publish=publish)

    async def ping(self) -> None:
        await self._call(_op_ping)

    async def _store(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str
    ) -> PublishAck:
        encoded = json.dumps(headers, separators=(",", ":"))
        seq, duplicate = await self._call(
            _op_publish, subject, data, encoded, msg_id, self.dedup_window, publish=True
        )
        return PublishAck(subject, seq, msg_id, duplicate)

    async def _open_feed(self, spec: ConsumerSpec) -> Feed:
        await self._call(_op_open_consumer, spec)
        feed = _EmbeddedFeed(self, spec)
        self._feeds.add(feed)
        return feed
