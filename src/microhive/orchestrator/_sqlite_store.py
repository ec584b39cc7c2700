"""The embedded workflow store: one SQLite file, WAL mode, shared by local processes.

The stdlib driver is synchronous; each call runs in a worker thread under a lock
so the event loop never blocks on the disk. Every call is one transaction (and
one trip to that thread), committed before the call returns. In WAL mode with
``synchronous=NORMAL`` a committed transaction is in the log before the call
returns, so it survives the process being killed (SIGKILL); only a power cut or
an OS crash can lose the last few (use PostgreSQL where that matters). ``FULL``
would add an fsync to each of the writes one sub-task result makes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from microhive.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from microhive.orchestrator.store import (
    EventData,
    RunEvent,
    RunRecord,
    RunStatus,
    TaskRecord,
    TaskStatus,
    Transition,
    WorkflowStore,
    ready_ids,
    run_from_row,
    run_to_row,
    task_from_row,
    task_to_row,
)

__all__ = ["SqliteWorkflowStore"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, goal TEXT NOT NULL, status TEXT NOT NULL, options TEXT NOT NULL,
    plan TEXT, result TEXT, error TEXT, trace TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL REFERENCES runs(id), id TEXT NOT NULL, position INTEGER NOT NULL,
    role TEXT NOT NULL, instruction TEXT NOT NULL, depends_on TEXT NOT NULL, inputs TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, result TEXT, error TEXT,
    updated_at REAL NOT NULL, PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS run_events (
    run_id TEXT NOT NULL REFERENCES runs(id), seq INTEGER NOT NULL, type TEXT NOT NULL,
    data TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (run_id, seq)
);
"""

_RUN_COLS = "id, goal, status, options, plan, result, error, trace, created_at, updated_at"
_TASK_COLS = (
    "run_id, id, role, instruction, depends_on, inputs, status, attempts, result, error, updated_at"
)


class SqliteWorkflowStore(WorkflowStore):
    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite://")
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs/x.db -> "/abs/x.db"
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise InvalidInput(f"workflow store URL {url!r}: expected sqlite:///PATH")
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(SCHEMA)
            return conn

        try:
            self._conn = await asyncio.to_thread(connect)
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"cannot open workflow store {self.path}: {exc}") from exc

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            await self.open()
        conn = self._conn
        assert conn is not None

        def locked() -> T:
            with self._lock:
                try:
                    with conn:  # one transaction: commit on success, roll back on error
                        return fn(conn)
                except sqlite3.IntegrityError as exc:
                    raise Conflict(str(exc)) from exc

        return await asyncio.to_thread(locked)

    async def create_run(self, run: RunRecord) -> None:
        row = run_to_row(run)

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO runs ({_RUN_COLS}) VALUES ({', '.join('?' * len(row))})",
                    tuple(row.values()),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"run {run.id} already exists") from None

        await self._run(insert)

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._run(
            lambda c: c.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        )
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return run_from_row(row)

    async def list_runs(
        self, *, statuses: Sequence[RunStatus] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        query = f"SELECT {_RUN_COLS} FROM runs"
        params: list[Any] = []
        if statuses is not None:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params.extend(s.value for s in statuses)
        query += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        rows = await self._run(lambda c: c.execute(query, params).fetchall())
        return [run_from_row(r) for r in rows]

    async def _write_run(
        self, run: RunRecord, expected: RunStatus | None, event: EventData | None = None
    ) -> bool:
        row = run_to_row(run)
        sets = ", ".join(f"{k} = ?" for k in row if k != "id")
        query = f"UPDATE runs SET {sets} WHERE id = ?"
        params = [v for k, v in row.items() if k != "id"] + [run.id]
        if expected is not None:
            query += " AND status = ?"
            params.append(expected.value)

        def write(conn: sqlite3.Connection) -> bool:
            if not conn.execute(query, params).rowcount:
                return False
            if event is not None:
                _insert_event(conn, run.id, _last_seq(conn, run.id) + 1, event, time.time())
            return True

        return await self._run(write)

    async def put_tasks(self, run_id: str, tasks: Sequence[TaskRecord]) -> None:
        await self.get_run(run_id)
        rows = [task_to_row(t) for t in tasks]

        def insert(conn: sqlite3.Connection) -> None:
            start = conn.execute(
                "SELECT COALESCE(MAX(position), 0) FROM tasks WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            for i, row in enumerate(rows, start=start + 1):
                try:
                    conn.execute(
                        f"INSERT INTO tasks ({_TASK_COLS}, position) "
                        f"VALUES ({', '.join('?' * (len(row) + 1))})",
                        (*row.values(), i),
                    )
                except sqlite3.IntegrityError:
                    raise Conflict(f"run {run_id} already has a sub-task {row['id']!r}") from None

        await self._run(insert)

    async def get_tasks(self, run_id: str) -> list[TaskRecord]:
        return (await self.get_run_and_tasks(run_id))[1]

    async def get_run_and_tasks(self, run_id: str) -> tuple[RunRecord, list[TaskRecord]]:
        def read(conn: sqlite3.Connection) -> tuple[Any, list[Any]]:
            run = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            tasks = conn.execute(
                f"SELECT {_TASK_COLS} FROM tasks WHERE run_id = ? ORDER BY position", (run_id,)
            ).fetchall()
            return run, tasks

        run, rows = await self._run(read)
        return run_from_row(run), [task_from_row(r) for r in rows]

    async def ready_tasks(self, run_id: str) -> tuple[RunRecord, list[str] | None]:
        def read(conn: sqlite3.Connection) -> tuple[Any, list[Any]]:
            run = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            # Only pending rows need their dependencies (most results leave none).
            rows = conn.execute(
                "SELECT id, status, CASE status WHEN 'pending' THEN depends_on END "
                "FROM tasks WHERE run_id = ?",
                (run_id,),
            ).fetchall()
            return run, rows

        run, rows = await self._run(read)
        return run_from_row(run), ready_ids(
            [(r[0], r[1], None if r[2] is None else json.loads(r[2])) for r in rows]
        )

    async def get_task(self, run_id: str, task_id: str) -> TaskRecord:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_TASK_COLS} FROM tasks WHERE run_id = ? AND id = ?", (run_id, task_id)
            ).fetchone()
        )
        if row is None:
            await self.get_run(run_id)  # NotFound for the run first
            raise NotFound(f"run {run_id} has no sub-task {task_id!r}")
        return task_from_row(row)

    async def _write_task(self, task: TaskRecord, expected: TaskStatus | None) -> bool:
        return await self._run(lambda c: _update_task(c, task, expected))

    async def transition(
        self, run_id: str, transitions: Sequence[Transition]
    ) -> list[TaskRecord | None]:
        def apply(conn: sqlite3.Connection) -> list[TaskRecord | None]:
            conn.execute("BEGIN IMMEDIATE")  # reads and writes below see one state
            now = time.time()
            run = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            finished = RunStatus(run["status"]).finished
            seq: int | None = None
            out: list[TaskRecord | None] = []
            for t in transitions:
                row = conn.execute(
                    f"SELECT {_TASK_COLS} FROM tasks WHERE run_id = ? AND id = ?",
                    (run_id, t.task_id),
                ).fetchone()
                if row is None:
                    raise NotFound(f"run {run_id} has no sub-task {t.task_id!r}")
                task = task_from_row(row)
                if finished or not t.holds(task):
                    out.append(None)
                    continue
                updated = replace(task, **t.changes, updated_at=now)
                _update_task(conn, updated, task.status)
                if t.event is not None:
                    seq = (_last_seq(conn, run_id) if seq is None else seq) + 1
                    _insert_event(conn, run_id, seq, t.event, now)
                out.append(updated)
            return out

        return await self._run(apply)

    async def append_event(self, run_id: str, type: str, data: dict[str, Any]) -> RunEvent:
        at = time.time()

        def insert(conn: sqlite3.Connection) -> int:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise NotFound(f"no run {run_id!r}")
            seq = _last_seq(conn, run_id) + 1
            _insert_event(conn, run_id, seq, (type, data), at)
            return seq

        seq = await self._run(insert)
        return RunEvent(run_id, seq, type, data, at)

    async def events(self, run_id: str, *, after: int = 0) -> list[RunEvent]:
        def read(conn: sqlite3.Connection) -> list[Any]:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise NotFound(f"no run {run_id!r}")
            return conn.execute(
                "SELECT seq, type, data, at FROM run_events WHERE run_id = ? AND seq > ? "
                "ORDER BY seq",
                (run_id, after),
            ).fetchall()

        rows = await self._run(read)
        return [RunEvent(run_id, r["seq"], r["type"], json.loads(r["data"]), r["at"]) for r in rows]


def _insert_event(
    conn: sqlite3.Connection, run_id: str, seq: int, event: EventData, at: float
) -> None:
    conn.execute(
        "INSERT INTO run_events (run_id, seq, type, data, at) VALUES (?, ?, ?, ?, ?)",
        (run_id, seq, event[0], json.dumps(event[1]), at),
    )


def _last_seq(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_id = ?", (run_id,)
    ).fetchone()
    return int(row[0])


def _update_task(conn: sqlite3.Connection, task: TaskRecord, expected: TaskStatus | None) -> bool:
    """Write the whole sub-task; only if its stored status is ``expected`` (unless None)."""
    row = task_to_row(task)
    keys = [k for k in row if k not in ("run_id", "id")]
    query = f"UPDATE tasks SET {', '.join(f'{k} = ?' for k in keys)} WHERE run_id = ? AND id = ?"
    params = [row[k] for k in keys] + [task.run_id, task.id]
    if expected is not None:
        query += " AND status = ?"
        params.append(expected.value)
    return bool(conn.execute(query, params).rowcount)
