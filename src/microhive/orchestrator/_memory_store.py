"""The in-process workflow store, for unit tests."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from microhive.errors import Conflict, NotFound
from microhive.orchestrator.store import (
    EventData,
    RunEvent,
    RunRecord,
    RunStatus,
    TaskRecord,
    TaskStatus,
    WorkflowStore,
)

__all__ = ["MemoryWorkflowStore"]


class MemoryWorkflowStore(WorkflowStore):
    def __init__(self, url: str = "memory://") -> None:
        self._runs: dict[str, RunRecord] = {}
        self._tasks: dict[str, dict[str, TaskRecord]] = {}
        self._events: dict[str, list[RunEvent]] = {}

    async def aclose(self) -> None:
        return None

    async def create_run(self, run: RunRecord) -> None:
        if run.id in self._runs:
            raise Conflict(f"run {run.id} already exists")
        self._runs[run.id] = run
        self._tasks[run.id] = {}
        self._events[run.id] = []

    async def get_run(self, run_id: str) -> RunRecord:
        try:
            return self._runs[run_id]
        except KeyError:
            raise NotFound(f"no run {run_id!r}") from None

    async def list_runs(
        self, *, statuses: Sequence[RunStatus] | None = None, limit: int = 100
    ) -> list[RunRecord]:
        runs = [r for r in self._runs.values() if statuses is None or r.status in statuses]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    async def _write_run(
        self, run: RunRecord, expected: RunStatus | None, event: EventData | None = None
    ) -> bool:
        current = await self.get_run(run.id)
        if expected is not None and current.status != expected:
            return False
        self._runs[run.id] = run
        if event is not None:
            await self.append_event(run.id, *event)
        return True

    async def put_tasks(self, run_id: str, tasks: Sequence[TaskRecord]) -> None:
        await self.get_run(run_id)
        existing = self._tasks[run_id]
        for task in tasks:
            if task.id in existing:
                raise Conflict(f"run {run_id} already has a sub-task {task.id!r}")
        for task in tasks:
            existing[task.id] = task

    async def get_tasks(self, run_id: str) -> list[TaskRecord]:
        await self.get_run(run_id)
        return list(self._tasks[run_id].values())

    async def get_task(self, run_id: str, task_id: str) -> TaskRecord:
        await self.get_run(run_id)
        try:
            return self._tasks[run_id][task_id]
        except KeyError:
            raise NotFound(f"run {run_id} has no sub-task {task_id!r}") from None

    async def _write_task(self, task: TaskRecord, expected: TaskStatus | None) -> bool:
        current = self._tasks[task.run_id][task.id]
        if expected is not None and current.status != expected:
            return False
        self._tasks[task.run_id][task.id] = task
        return True

    async def append_event(self, run_id: str, type: str, data: dict[str, Any]) -> RunEvent:
        await self.get_run(run_id)
        log = self._events[run_id]
        event = RunEvent(run_id, len(log) + 1, type, data, time.time())
        log.append(event)
        return event

    async def events(self, run_id: str, *, after: int = 0) -> list[RunEvent]:
        await self.get_run(run_id)
        return [e for e in self._events[run_id] if e.seq > after]
