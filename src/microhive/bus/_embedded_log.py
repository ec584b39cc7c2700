"""The embedded bus's thread: it owns the SQLite connection and runs the
operations of :mod:`._embedded_ops` in grouped transactions (see
:mod:`microhive.bus.embedded` for the design).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from microhive.bus._embedded_ops import SCHEMA, op_ping
from microhive.errors import InvalidInput, ServiceUnavailable

__all__ = ["DURABLE", "READ", "WRITE", "Check", "LogThread"]

log = logging.getLogger("microhive.bus")

HOUSEKEEP_EVERY = 30.0
#: Write transactions of one process between its checkpoints.
_CHECKPOINT_EVERY = 200


#: What an operation does to the database, which decides the transaction it runs in.
READ, WRITE, DURABLE = 0, 1, 2

Check = Callable[..., Any]
_Op = tuple[Callable[..., Any], tuple[Any, ...], int, "asyncio.Future[Any]", Check | None]
_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


class LogThread(threading.Thread):
    """Owns the SQLite connection; runs queued operations in grouped transactions.

    One batch is every operation queued since the last one. Operations with a
    read-only ``check`` (a claim asks "is there anything to hand out?") run it
    first in a read transaction, which takes no lock: an idle poll never queues
    behind writers. What is left runs in one write transaction under the bus's
    write lock, a ``flock`` on ``bus.lock`` that every process takes around its
    write transactions -- the kernel hands it to the next waiter the moment it is
    free, where SQLite's own busy handler would sleep and retry (1, 2, 5, 10 ms).
    A batch holding a publish is made durable after the lock is released: the
    transaction commits (``synchronous=NORMAL``), and the WAL is fsynced outside
    the lock, so the fsyncs of several processes overlap instead of queueing;
    the publishers hear back after the fsync.

    A short operation that needs no fsync (a claim, an ack) skips the thread when
    it can: when nothing is queued before it and the write lock is free right now,
    it runs on the caller's thread at once (a fraction of a millisecond of SQLite)
    instead of paying two thread hand-offs. It never waits there: a held lock
    sends it to the thread. Checkpoints (which fsync the database) always run on
    the thread, outside the write lock: every ``_CHECKPOINT_EVERY`` write
    transactions of this process, not inside whichever commit crossed SQLite's
    threshold.
    """

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        on_publish: Callable[[set[str]], None],
    ) -> None:
        super().__init__(name=f"microhive-bus:{path}", daemon=True)
        self.path = path
        self.loop = loop
        self.on_publish = on_publish
        self.ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.conn: sqlite3.Connection | None = None
        self.housekeep: Callable[[sqlite3.Connection, float], None] | None = None
        self._last_housekeeping = 0.0
        self._lock_fd = -1
        self._wal_fd = -1
        self._wal_path = path.with_name(path.name + "-wal")
        #: Held while the connection is in use (by this thread or a caller's).
        self._conn_lock = threading.Lock()
        #: Operations queued and not answered yet; guarded by ``_count_lock``.
        self._queued = 0
        self._count_lock = threading.Lock()
        self._open = False
        #: Write transactions since the last checkpoint (a rough measure of the WAL).
        self._writes = 0
        self._checkpoint_asked = False

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        mode: int = WRITE,
        check: Check | None = None,
        inline: bool = False,
    ) -> asyncio.Future[Any]:
        """Run ``fn(conn, *args)`` on the thread -- or, with ``inline`` and nothing in
        the way, right here (the future is then done already)."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        if inline and mode != DURABLE and self._inline(fn, args, mode, check, fut):
            if self._writes >= _CHECKPOINT_EVERY and not self._checkpoint_asked:
                self._checkpoint_asked = True
                self._enqueue((op_ping, (), READ, self.loop.create_future(), None))
            return fut
        self._enqueue((fn, args, mode, fut, check))
        return fut

    def _enqueue(self, op: _Op) -> None:
        with self._count_lock:
            self._queued += 1
        self.ops.put(op)

    def stop(self) -> None:
        """Finish what is queued, then close the connection."""
        self._open = False  # nothing runs inline any more
        self.ops.put(None)

    def _inline(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        mode: int,
        check: Check | None,
        fut: asyncio.Future[Any],
    ) -> bool:
        """Run the operation on the caller's thread if that costs no waiting; else False."""
        with self._count_lock:
            if self._queued or not self._conn_lock.acquire(blocking=False):
                return False  # keep the order of what is queued; do not wait
        try:
            conn = self.conn
            if conn is None or not self._open:
                return False
            try:
                if mode == READ or check is not None:
                    conn.execute("BEGIN")
                    try:
                        answer = (check or fn)(conn, *args)
                    finally:
                        conn.execute("COMMIT")
                    if mode == READ or answer is not None:
                        fut.set_result(answer)
                        return True
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        value = fn(conn, *args)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                    self._writes += 1
                finally:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            except (sqlite3.Error, InvalidInput) as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                fut.set_exception(_convert(exc))
                return True
            fut.set_result(value)
            return True
        finally:
            self._conn_lock.release()

    def run(self) -> None:
        try:
            self._lock_fd = os.open(self.path.with_name("bus.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=30000")
            with self._write_lock():
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
            # Durability comes from the fsync after each publishing batch (see above).
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run here, outside the write lock (see above), not in a commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self.conn = conn
            self._open = True
        except (OSError, sqlite3.Error) as exc:
            self._close_files()
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
                with self._count_lock:
                    self._queued -= len(batch)
                if self._writes >= _CHECKPOINT_EVERY:
                    self._checkpoint(conn)
                if stop:
                    break
        finally:
            with self._conn_lock:
                self._open = False
                conn.close()
            self._close_files()

    def _close_files(self) -> None:
        for fd in (self._lock_fd, self._wal_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._lock_fd = self._wal_fd = -1

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[_Result] = []
        # The leading reads and checks run first, without the lock; from the first
        # plain write on, everything runs in order in the write transaction, so an
        # operation always sees the ones queued before it.
        split = next((i for i, op in enumerate(batch) if op[2] != READ and op[4] is None), None)
        reads, writes = (batch, []) if split is None else (batch[:split], batch[split:])
        try:
            with self._conn_lock:
                if reads:
                    writes = self._read_phase(conn, reads, results) + writes
                if writes:
                    with self._write_lock():
                        self._write_phase(conn, writes, results)
            # A durable operation is a publish, its first argument the subject. Its
            # consumers are woken as it commits; its publisher once it is on disk.
            published = [op for op in writes if op[2] == DURABLE]
            if published:
                self._wake({op[1][0] for op in published})
                self._sync_wal()
        except Exception as exc:  # a failed batch fails its callers; the thread goes on
            with self._conn_lock, contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            error = _convert(exc)
            # A publish is done only once it is durable (a retry finds its message id).
            unsure = {id(op[3]) for op in batch if op[2] == DURABLE}
            results = [r for r in results if id(r[0]) not in unsure]
            answered = {id(r[0]) for r in results}
            results += [(op[3], None, error) for op in batch if id(op[3]) not in answered]
        self._resolve(results)

    def _wake(self, subjects: set[str]) -> None:
        try:
            self.on_publish(subjects)
        except Exception:  # wake-ups are an optimisation: consumers also poll
            log.exception("embedded bus: waking consumers failed")

    def _read_phase(
        self, conn: sqlite3.Connection, batch: list[_Op], results: list[_Result]
    ) -> list[_Op]:
        """Run reads and checks in one read transaction; return the ops that must write."""
        writes: list[_Op] = []
        conn.execute("BEGIN")
        try:
            for op in batch:
                fn, args, mode, fut, check = op
                try:
                    if mode == READ:
                        results.append((fut, fn(conn, *args), None))
                        continue
                    answer = check(conn, *args) if check is not None else None
                except (sqlite3.Error, InvalidInput) as exc:
                    results.append((fut, None, _convert(exc)))
                    continue
                if answer is None:
                    writes.append(op)
                else:
                    results.append((fut, answer, None))
        finally:
            conn.execute("COMMIT")
        return writes

    def _write_phase(
        self, conn: sqlite3.Connection, batch: list[_Op], results: list[_Result]
    ) -> None:
        conn.execute("BEGIN IMMEDIATE")
        done: list[_Result] = []
        for fn, args, _, fut, _ in batch:
            conn.execute("SAVEPOINT op")
            try:
                done.append((fut, fn(conn, *args), None))
                conn.execute("RELEASE op")
            except (sqlite3.Error, InvalidInput) as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                done.append((fut, None, _convert(exc)))
        now = time.time()
        if self.housekeep is not None and now - self._last_housekeeping > HOUSEKEEP_EVERY:
            self._last_housekeeping = now
            self.housekeep(conn, now)
        conn.execute("COMMIT")
        self._writes += 1
        results += done

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database (PASSIVE: no waiting on other processes)."""
        with self._conn_lock:
            self._writes, self._checkpoint_asked = 0, False
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # another process is checkpointing: fine
                log.debug("embedded bus: checkpoint skipped: %s", exc)

    def _sync_wal(self) -> None:
        """fsync the WAL: every transaction committed to it so far is now on disk.

        The WAL keeps its inode while any connection (ours) is open; the check
        covers a file replaced all the same. A checkpoint syncs what it moves on
        its own, so nothing committed is only in a file this does not sync.
        """
        if self._wal_fd >= 0 and os.fstat(self._wal_fd).st_ino != os.stat(self._wal_path).st_ino:
            os.close(self._wal_fd)
            self._wal_fd = -1
        if self._wal_fd < 0:
            self._wal_fd = os.open(self._wal_path, os.O_RDONLY)
        os.fdatasync(self._wal_fd)

    def _resolve(self, results: list[_Result]) -> None:
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
    if isinstance(exc, sqlite3.Error | OSError):
        return ServiceUnavailable(f"embedded bus: {exc}")
    if not isinstance(exc, InvalidInput):
        log.error("embedded bus: operation failed", exc_info=exc)
    return exc
