"""The workflow store on PostgreSQL, for meshes that run many orchestrator hosts.

Same schema and semantics as the SQLite store; compare-and-set updates are single
``UPDATE ... WHERE status = $n`` statements, and per-run event sequence numbers
come from a row lock on the run, so concurrent appenders never collide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from microhive.errors import Conflict, MissingDependency, NotFound, ServiceUnavailable
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

try:
    import asyncpg
except ImportError:  # pragma: no cover - depends on the installed extras
    asyncpg = None

__all__ = ["PostgresWorkflowStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS {p}runs (
    id TEXT PRIMARY KEY, goal TEXT NOT NULL, status TEXT NOT NULL, options TEXT NOT NULL,
    plan TEXT, result TEXT, error TEXT, trace TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS {p}runs_status ON {p}runs (status, created_at);
CREATE TABLE IF NOT EXISTS {p}tasks (
    run_id TEXT NOT NULL REFERENCES {p}runs(id), id TEXT NOT NULL, position INTEGER NOT NULL,
    role TEXT NOT NULL, instruction TEXT NOT NULL, depends_on TEXT NOT NULL, inputs TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, result TEXT, error TEXT,
    updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS {p}run_events (
    run_id TEXT NOT NULL REFERENCES {p}runs(id), seq INTEGER NOT NULL, type TEXT NOT NULL,
    data TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (run_id, seq)
);
"""

_RUN_COLS = ["id", "goal", "status", "options", "plan", "result", "error", "trace"]
_RUN_COLS += ["created_at", "updated_at"]
_TASK_COLS = ["run_id", "id", "role", "instruction", "depends_on", "inputs", "status"]
_TASK_COLS += ["attempts", "result", "error", "updated_at"]


class PostgresWorkflowStore(WorkflowStore):
    """``postgresql://user@host:port/db[?table_prefix=x_]``."""

    def __init__(self, url: str) -> None:
        if asyncpg is None:
            raise MissingDependency("asyncpg", "postgres", "The PostgreSQL workflow store")
        base, _, query = url.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        prefix = params.pop("table_prefix", "microhive_")
        if not prefix.replace("_", "").isalnum():
            raise ValueError(f"table_prefix {prefix!r} must be letters, digits and '_'")
        self._dsn = base
        self._p = prefix
        self._pool: Any = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=8)
            async with self._pool.acquire() as conn:
                await conn.execute(SCHEMA.format(p=self._p))
        except (OSError, asyncpg.PostgresError) as exc:
            await self.aclose()
            raise ServiceUnavailable(f"cannot open the PostgreSQL workflow store: {exc}") from exc

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _pool_ready(self) -> Any:
        if self._pool is None:
            await self.open()
        return self._pool

    async def create_run(self, run: RunRecord) -> None:
        row = run_to_row(run)
        pool = await self._pool_ready()
        marks = ", ".join(f"${i}" for i in range(1, len(_RUN_COLS) + 1))
        try:
            await pool.execute(
                f"INSERT INTO {self._p}runs ({', '.join(_RUN_COLS)}) VALUES ({marks})",
                *(row[c] for c in _RUN_COLS),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"run {run.id} already exists") from None

    async def get_run(self, run_id: str) -> RunRecord:
        pool = await self._pool_ready()
        row = await pool.fetchrow(
            f"SELECT {', '.join(_RUN_COLS)} FROM {self._p}runs WHERE id = $1", run_id
        )
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return run_from_row(row)

    async def list_runs(
        self, *, statuses: Sequence[RunStatus] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        pool = await self._pool_ready()
        query = f"SELECT {', '.join(_RUN_COLS)} FROM {self._p}runs"
        args: list[Any] = []
        if statuses is not None:
            query += " WHERE status = ANY($1::text[])"
            args.append([s.value for s in statuses])
        query += f" ORDER BY created_at DESC LIMIT ${len(args) + 1}"
        args.append(limit)
        return [run_from_row(r) for r in await pool.fetch(query, *args)]

    async def _write_run(
        self, run: RunRecord, expected: RunStatus | None, event: EventData | None = None
    ) -> bool:
        row = run_to_row(run)
        cols = [c for c in _RUN_COLS if c != "id"]
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, start=1))
        args: list[Any] = [row[c] for c in cols] + [run.id]
        query = f"UPDATE {self._p}runs SET {sets} WHERE id = ${len(args)}"
        if expected is not None:
            args.append(expected.value)
            query += f" AND status = ${len(args)}"
        pool = await self._pool_ready()
        async with pool.acquire() as conn, conn.transaction():
            if not str(await conn.execute(query, *args)).endswith(" 1"):
                return False
            if event is not None:  # the UPDATE holds the run's row lock: seq is ours
                await self._insert_event(conn, run.id, None, event, time.time())
        return True

    async def _insert_event(
        self, conn: Any, run_id: str, seq: int | None, event: EventData, at: float
    ) -> int:
        """Append one event (``seq`` None: the next one); the caller holds the run's lock."""
        if seq is None:
            seq = int(
                await conn.fetchval(
                    f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {self._p}run_events WHERE run_id = $1",
                    run_id,
                )
            )
        await conn.execute(
            f"INSERT INTO {self._p}run_events (run_id, seq, type, data, at) "
            "VALUES ($1, $2, $3, $4, $5)",
            run_id,
            seq,
            event[0],
            json.dumps(event[1]),
            at,
        )
        return seq

    async def put_tasks(self, run_id: str, tasks: Sequence[TaskRecord]) -> None:
        await self.get_run(run_id)
        pool = await self._pool_ready()
        cols = [*_TASK_COLS, "position"]
        marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SELECT 1 FROM {self._p}runs WHERE id = $1 FOR UPDATE", run_id)
            start = await conn.fetchval(
                f"SELECT COALESCE(MAX(position), 0) FROM {self._p}tasks WHERE run_id = $1", run_id
            )
            for i, task in enumerate(tasks, start=start + 1):
                row = task_to_row(task)
                try:
                    await conn.execute(
                        f"INSERT INTO {self._p}tasks ({', '.join(cols)}) VALUES ({marks})",
                        *(row[c] for c in _TASK_COLS),
                        i,
                    )
                except asyncpg.UniqueViolationError:
                    raise Conflict(f"run {run_id} already has a sub-task {task.id!r}") from None

    async def get_tasks(self, run_id: str) -> list[TaskRecord]:
        await self.get_run(run_id)
        pool = await self._pool_ready()
        rows = await pool.fetch(
            f"SELECT {', '.join(_TASK_COLS)} FROM {self._p}tasks WHERE run_id = $1 "
            "ORDER BY position",
            run_id,
        )
        return [task_from_row(r) for r in rows]

    async def ready_tasks(self, run_id: str) -> tuple[RunRecord, list[str] | None]:
        run = await self.get_run(run_id)
        pool = await self._pool_ready()
        rows = await pool.fetch(
            "SELECT id, status, CASE status WHEN 'pending' THEN depends_on END "
            f"FROM {self._p}tasks WHERE run_id = $1",
            run_id,
        )
        return run, ready_ids(
            [(r[0], r[1], None if r[2] is None else json.loads(r[2])) for r in rows]
        )

    async def get_task(self, run_id: str, task_id: str) -> TaskRecord:
        pool = await self._pool_ready()
        row = await pool.fetchrow(
            f"SELECT {', '.join(_TASK_COLS)} FROM {self._p}tasks WHERE run_id = $1 AND id = $2",
            run_id,
            task_id,
        )
        if row is None:
            await self.get_run(run_id)
            raise NotFound(f"run {run_id} has no sub-task {task_id!r}")
        return task_from_row(row)

    async def _write_task(self, task: TaskRecord, expected: TaskStatus | None) -> bool:
        return await self._update_task(await self._pool_ready(), task, expected)

    async def _update_task(self, conn: Any, task: TaskRecord, expected: TaskStatus | None) -> bool:
        row = task_to_row(task)
        cols = [c for c in _TASK_COLS if c not in ("run_id", "id")]
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, start=1))
        args: list[Any] = [row[c] for c in cols] + [task.run_id, task.id]
        where = f"run_id = ${len(args) - 1} AND id = ${len(args)}"
        query = f"UPDATE {self._p}tasks SET {sets} WHERE {where}"
        if expected is not None:
            args.append(expected.value)
            query += f" AND status = ${len(args)}"
        return str(await conn.execute(query, *args)).endswith(" 1")

    async def transition(
        self, run_id: str, transitions: Sequence[Transition]
    ) -> list[TaskRecord | None]:
        pool = await self._pool_ready()
        out: list[TaskRecord | None] = []
        async with pool.acquire() as conn, conn.transaction():
            # The run's row lock orders this against other writers of its events.
            status = await conn.fetchval(
                f"SELECT status FROM {self._p}runs WHERE id = $1 FOR UPDATE", run_id
            )
            if status is None:
                raise NotFound(f"no run {run_id!r}")
            finished = RunStatus(status).finished
            now = time.time()
            seq: int | None = None
            for t in transitions:
                row = await conn.fetchrow(
                    f"SELECT {', '.join(_TASK_COLS)} FROM {self._p}tasks "
                    "WHERE run_id = $1 AND id = $2 FOR UPDATE",
                    run_id,
                    t.task_id,
                )
                if row is None:
                    raise NotFound(f"run {run_id} has no sub-task {t.task_id!r}")
                task = task_from_row(row)
                if finished or not t.holds(task):
                    out.append(None)
                    continue
                updated = replace(task, **t.changes, updated_at=now)
                await self._update_task(conn, updated, task.status)
                if t.event is not None:
                    seq = await self._insert_event(
                        conn, run_id, None if seq is None else seq + 1, t.event, now
                    )
                out.append(updated)
        return out

    async def append_event(self, run_id: str, type: str, data: dict[str, Any]) -> RunEvent:
        pool = await self._pool_ready()
        at = time.time()
        async with pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                f"SELECT 1 FROM {self._p}runs WHERE id = $1 FOR UPDATE", run_id
            )
            if found is None:
                raise NotFound(f"no run {run_id!r}")
            seq = await self._insert_event(conn, run_id, None, (type, data), at)
        return RunEvent(run_id, seq, type, data, at)

    async def events(self, run_id: str, *, after: int = 0) -> list[RunEvent]:
        await self.get_run(run_id)
        pool = await self._pool_ready()
        rows = await pool.fetch(
            f"SELECT seq, type, data, at FROM {self._p}run_events WHERE run_id = $1 AND seq > $2 "
            "ORDER BY seq",
            run_id,
            after,
        )
        return [RunEvent(run_id, r["seq"], r["type"], json.loads(r["data"]), r["at"]) for r in rows]
