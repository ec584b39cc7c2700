"""The workflow store: where runs, their sub-tasks and their progress events live.

The orchestrator keeps no state in memory that it cannot rebuild from here, so a
SIGKILLed orchestrator started again reads its unfinished runs back and carries on
without redoing finished sub-tasks.

One interface, :class:`WorkflowStore`, and its backends chosen by URL scheme:

* ``memory://`` -- in-process, for unit tests;
* ``sqlite:///PATH`` -- the embedded default (stdlib ``sqlite3``, WAL mode);
* ``postgresql://...`` -- at scale (``asyncpg``; ``pip install 'microhive[postgres]'``).

State changes are compare-and-set (``expected=`` a status): a sub-task result that
arrives twice (a redelivered message) is applied once, and two orchestrator
processes cannot both move a run forward. :meth:`WorkflowStore.transition` moves
sub-tasks and records the events that say so together, in one transaction on the
SQLite and PostgreSQL backends: an orchestrator killed in between leaves neither
or both, and a busy orchestrator makes one round trip instead of four.
"""

from __future__ import annotations

import importlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from microhive.errors import Conflict, InvalidInput, NotFound

__all__ = [
    "RunEvent",
    "RunRecord",
    "RunStatus",
    "TaskRecord",
    "TaskStatus",
    "Transition",
    "WorkflowStore",
    "open_store",
    "ready_ids",
]


class RunStatus(StrEnum):
    PENDING = "pending"
    PLANNING = "planning"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class TaskStatus(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED)


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    goal: str
    status: RunStatus = RunStatus.PENDING
    options: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    trace: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    run_id: str
    id: str
    role: str
    instruction: str
    depends_on: tuple[str, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    updated_at: float = field(default_factory=time.time)


#: An event to append: its type and data.
EventData = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Transition:
    """One compare-and-set of a sub-task, and the event that says it happened.

    It holds while the run is unfinished and the sub-task has made ``attempt``
    attempts and is in one of the ``expected`` statuses; then ``changes`` (fields
    of :class:`TaskRecord`) are written and ``event`` (type, data), if any, is
    appended to the run's events.
    """

    task_id: str
    attempt: int
    expected: tuple[TaskStatus, ...]
    changes: Mapping[str, Any]
    event: EventData | None = None

    def holds(self, task: TaskRecord) -> bool:
        """Whether the sub-task is where this transition expects it (the run aside)."""
        return task.attempts == self.attempt and task.status in self.expected


@dataclass(frozen=True, slots=True)
class RunEvent:
    run_id: str
    seq: int
    type: str
    data: dict[str, Any]
    at: float


class WorkflowStore(ABC):
    """Durable runs, sub-tasks and progress events. Async context manager."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:  # noqa: B027 - optional hook, most backends need it
        """Connect and create the schema if needed (idempotent)."""

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    async def create_run(self, run: RunRecord) -> None:
        """Store a new run; Conflict if the id exists."""

    @abstractmethod
    async def get_run(self, run_id: str) -> RunRecord:
        """The run, or NotFound."""

    @abstractmethod
    async def list_runs(
        self, *, statuses: Sequence[RunStatus] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs, newest first, optionally only those in ``statuses``."""

    @abstractmethod
    async def _write_run(
        self, run: RunRecord, expected: RunStatus | None, event: EventData | None = None
    ) -> bool:
        """Replace the run if its stored status is ``expected`` (any when None), and then
        append ``event`` (type, data) to its events: both in one transaction, or neither."""

    @abstractmethod
    async def put_tasks(self, run_id: str, tasks: Sequence[TaskRecord]) -> None:
        """Add sub-tasks to a run (a re-plan adds more); Conflict on a repeated id."""

    @abstractmethod
    async def get_tasks(self, run_id: str) -> list[TaskRecord]:
        """The run's sub-tasks in insertion order."""

    @abstractmethod
    async def _write_task(self, task: TaskRecord, expected: TaskStatus | None) -> bool: ...

    @abstractmethod
    async def append_event(self, run_id: str, type: str, data: dict[str, Any]) -> RunEvent:
        """Append a progress event; sequence numbers are per run, from 1."""

    @abstractmethod
    async def events(self, run_id: str, *, after: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after``, in order."""

    # ------------------------------------------------------------------ shared

    async def update_run(
        self,
        run_id: str,
        *,
        expected: RunStatus | None = None,
        event: EventData | None = None,
        **changes: Any,
    ) -> RunRecord:
        """Change fields of a run, compare-and-set on its status; Conflict if it moved.

        ``event`` (type, data) is appended to the run's events with the change,
        atomically: a run that finished has said so to its event streams.
        """
        current = await self.get_run(run_id)
        if expected is not None and current.status != expected:
            raise Conflict(
                f"run {run_id} is {current.status.value}, expected {expected.value}; not changed"
            )
        updated = replace(current, **changes, updated_at=time.time())
        if not await self._write_run(updated, expected or current.status, event):
            raise Conflict(f"run {run_id} changed concurrently; not changed")
        return updated

    async def get_task(self, run_id: str, task_id: str) -> TaskRecord:
        """One sub-task, or NotFound (backends answer this with a one-row query)."""
        for task in await self.get_tasks(run_id):
            if task.id == task_id:
                return task
        raise NotFound(f"run {run_id} has no sub-task {task_id!r}")

    async def update_task(
        self, run_id: str, task_id: str, *, expected: TaskStatus | None = None, **changes: Any
    ) -> TaskRecord:
        """Change fields of a sub-task, compare-and-set on its status; Conflict if it moved."""
        current = await self.get_task(run_id, task_id)
        if expected is not None and current.status != expected:
            raise Conflict(
                f"sub-task {task_id} of run {run_id} is {current.status.value}, "
                f"expected {expected.value}; not changed"
            )
        updated = replace(current, **changes, updated_at=time.time())
        if not await self._write_task(updated, expected or current.status):
            raise Conflict(f"sub-task {task_id} of run {run_id} changed concurrently")
        return updated

    async def transition(
        self, run_id: str, transitions: Sequence[Transition]
    ) -> list[TaskRecord | None]:
        """Apply each transition that holds, with its event; per transition, the updated
        sub-task or None (it did not hold: nothing written). NotFound for an unknown
        run or sub-task.

        Backends with transactions apply them all in one. This default, built from
        the other methods, writes the change and then the event.
        """
        run = await self.get_run(run_id)
        out: list[TaskRecord | None] = []
        for t in transitions:
            task = await self.get_task(run_id, t.task_id)
            if run.status.finished or not t.holds(task):
                out.append(None)
                continue
            try:
                updated = await self.update_task(
                    run_id, t.task_id, expected=task.status, **t.changes
                )
            except Conflict:
                out.append(None)
                continue
            if t.event is not None:
                await self.append_event(run_id, *t.event)
            out.append(updated)
        return out

    async def get_run_and_tasks(self, run_id: str) -> tuple[RunRecord, list[TaskRecord]]:
        """The run and its sub-tasks, read together (one round trip where the backend can)."""
        return await self.get_run(run_id), await self.get_tasks(run_id)

    async def ready_tasks(self, run_id: str) -> tuple[RunRecord, list[str] | None]:
        """The run, and the ids of its pending sub-tasks whose dependencies have all
        succeeded -- or None when every sub-task has succeeded. What to do after a
        result, in a lighter read than :meth:`get_run_and_tasks`."""
        run, tasks = await self.get_run_and_tasks(run_id)
        return run, ready_ids([(t.id, t.status.value, t.depends_on) for t in tasks])

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs an orchestrator must resume after a restart."""
        return await self.list_runs(
            statuses=[RunStatus.PENDING, RunStatus.PLANNING, RunStatus.RUNNING], limit=10_000
        )


# ------------------------------------------------------------------ encoding


def ready_ids(rows: Sequence[tuple[str, str, Sequence[str] | None]]) -> list[str] | None:
    """From (id, status, dependencies) rows: the pending ones ready to go, or None when
    all succeeded. Dependencies may be None where a row's status makes them moot."""
    succeeded = {i for i, status, _ in rows if status == TaskStatus.SUCCEEDED.value}
    if len(succeeded) == len(rows):
        return None
    return [
        i
        for i, status, deps in rows
        if status == TaskStatus.PENDING.value and succeeded.issuperset(deps or ())
    ]


def run_to_row(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "goal": run.goal,
        "status": run.status.value,
        "options": json.dumps(run.options),
        "plan": None if run.plan is None else json.dumps(run.plan),
        "result": None if run.result is None else json.dumps(run.result),
        "error": run.error,
        "trace": json.dumps(run.trace),
        "created_at": run.created_at,
        "updated_at": run.updated_at,
    }


def run_from_row(row: Any) -> RunRecord:
    return RunRecord(
        id=row["id"],
        goal=row["goal"],
        status=RunStatus(row["status"]),
        options=json.loads(row["options"]),
        plan=None if row["plan"] is None else json.loads(row["plan"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        error=row["error"],
        trace=json.loads(row["trace"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def task_to_row(task: TaskRecord) -> dict[str, Any]:
    return {
        "run_id": task.run_id,
        "id": task.id,
        "role": task.role,
        "instruction": task.instruction,
        "depends_on": json.dumps(list(task.depends_on)),
        "inputs": json.dumps(task.inputs),
        "status": task.status.value,
        "attempts": task.attempts,
        "result": None if task.result is None else json.dumps(task.result),
        "error": task.error,
        "updated_at": task.updated_at,
    }


def task_from_row(row: Any) -> TaskRecord:
    return TaskRecord(
        run_id=row["run_id"],
        id=row["id"],
        role=row["role"],
        instruction=row["instruction"],
        depends_on=tuple(json.loads(row["depends_on"])),
        inputs=json.loads(row["inputs"]),
        status=TaskStatus(row["status"]),
        attempts=int(row["attempts"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        error=row["error"],
        updated_at=float(row["updated_at"]),
    )


# ------------------------------------------------------------------- opening

_BACKENDS: dict[str, str] = {
    "memory": "microhive.orchestrator._memory_store:MemoryWorkflowStore",
    "sqlite": "microhive.orchestrator._sqlite_store:SqliteWorkflowStore",
    "postgresql": "microhive.orchestrator._postgres_store:PostgresWorkflowStore",
    "postgres": "microhive.orchestrator._postgres_store:PostgresWorkflowStore",
}


def open_store(url: str) -> WorkflowStore:
    """The workflow store for ``url`` (not yet opened: use ``async with``)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise InvalidInput(f"workflow store URL {url!r}: expected one of {known}")
    module_name, _, cls_name = _BACKENDS[scheme].partition(":")
    module = importlib.import_module(module_name)
    store: WorkflowStore = getattr(module, cls_name)(url)
    return store
