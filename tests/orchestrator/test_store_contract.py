"""One contract for every workflow store backend, run against the real databases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microhive.errors import Conflict, InvalidInput, NotFound
from microhive.orchestrator import (
    RunRecord,
    RunStatus,
    TaskRecord,
    TaskStatus,
    Transition,
    WorkflowStore,
    open_store,
)


class StoreContract:
    """Subclasses provide the ``store`` fixture; every test here runs on each backend."""

    async def test_create_and_get_a_run(self, store: WorkflowStore) -> None:
        run = RunRecord(id="r1", goal="write a brief", options={"deadline": 30}, trace={"a": "b"})
        await store.create_run(run)
        back = await store.get_run("r1")
        assert back.goal == "write a brief"
        assert back.options == {"deadline": 30}
        assert back.trace == {"a": "b"}
        assert back.status is RunStatus.PENDING

    async def test_duplicate_run_is_a_conflict(self, store: WorkflowStore) -> None:
        await store.create_run(RunRecord(id="r1", goal="g"))
        with pytest.raises(Conflict):
            await store.create_run(RunRecord(id="r1", goal="g"))

    async def test_unknown_run_is_not_found(self, store: WorkflowStore) -> None:
        with pytest.raises(NotFound):
            await store.get_run("nope")
        with pytest.raises(NotFound):
            await store.append_event("nope", "x", {})

    async def test_update_run_is_compare_and_set(self, store: WorkflowStore) -> None:
        await store.create_run(RunRecord(id="r1", goal="g"))
        plan = {"tasks": [{"id": "t1"}]}
        updated = await store.update_run(
            "r1", expected=RunStatus.PENDING, status=RunStatus.RUNNING, plan=plan
        )
        assert updated.status is RunStatus.RUNNING
        assert (await store.get_run("r1")).plan == plan
        with pytest.raises(Conflict, match="expected pending"):
            await store.update_run("r1", expected=RunStatus.PENDING, status=RunStatus.FAILED)
        assert (await store.get_run("r1")).status is RunStatus.RUNNING

    async def test_list_and_unfinished_runs(self, store: WorkflowStore) -> None:
        for i, status in enumerate([RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.PENDING]):
            await store.create_run(
                RunRecord(id=f"r{i}", goal="g", status=status, created_at=1000.0 + i)
            )
        assert [r.id for r in await store.list_runs()] == ["r2", "r1", "r0"]
        assert {r.id for r in await store.unfinished_runs()} == {"r0", "r2"}
        assert [r.id for r in await store.list_runs(limit=1)] == ["r2"]

    async def test_tasks_keep_order_and_update_once(self, store: WorkflowStore) -> None:
        await store.create_run(RunRecord(id="r1", goal="g"))
        tasks = [
            TaskRecord(run_id="r1", id="outline", role="planner", instruction="outline"),
            TaskRecord(
                run_id="r1",
                id="research",
                role="researcher",
                instruction="dig",
                depends_on=("outline",),
                inputs={"q": "bees"},
            ),
        ]
        await store.put_tasks("r1", tasks)
        await store.put_tasks(
            "r1", [TaskRecord(run_id="r1", id="write", role="writer", instruction="w")]
        )
        got = await store.get_tasks("r1")
        assert [t.id for t in got] == ["outline", "research", "write"]
        assert got[1].depends_on == ("outline",)
        assert got[1].inputs == {"q": "bees"}

        done = await store.update_task(
            "r1",
            "outline",
            expected=TaskStatus.PENDING,
            status=TaskStatus.SUCCEEDED,
            result={"text": "ok"},
            attempts=1,
        )
        assert done.result == {"text": "ok"}
        # A redelivered result for the same sub-task is refused, not applied twice.
        with pytest.raises(Conflict):
            await store.update_task(
                "r1", "outline", expected=TaskStatus.PENDING, status=TaskStatus.SUCCEEDED
            )
        assert (await store.get_task("r1", "outline")).attempts == 1
        with pytest.raises(NotFound):
            await store.get_task("r1", "missing")

    async def test_duplicate_task_id_is_refused_whole(self, store: WorkflowStore) -> None:
        await store.create_run(RunRecord(id="r1", goal="g"))
        await store.put_tasks("r1", [TaskRecord(run_id="r1", id="a", role="x", instruction="i")])
        with pytest.raises(Conflict):
            await store.put_tasks(
                "r1",
                [
                    TaskRecord(run_id="r1", id="b", role="x", instruction="i"),
                    TaskRecord(run_id="r1", id="a", role="x", instruction="i"),
                ],
            )
        assert [t.id for t in await store.get_tasks("r1")] == ["a"]

    async def test_events_are_sequenced_per_run(self, store: WorkflowStore) -> None:
        await store.create_run(RunRecord(id="r1", goal="g"))
        await store.create_run(RunRecord(id="r2", goal="g"))
        await asyncio.gather(*(store.append_event("r1", "tick", {"i": i}) for i in range(10)))
        await store.append_event("r2", "other", {})
        events = await store.events("r1")
        assert [e.seq for e in events] == list(range(1, 11))
        assert sorted(e.data["i"] for e in events) == list(range(10))
        assert [e.seq for e in await store.events("r1", after=8)] == [9, 10]
        assert [e.type for e in await store.events("r2")] == ["other"]

    async def test_transitions_apply_with_their_events_or_not_at_all(
        self, store: WorkflowStore
    ) -> None:
        await store.create_run(RunRecord(id="r1", goal="g", status=RunStatus.RUNNING))
        await store.put_tasks(
            "r1", [TaskRecord(run_id="r1", id=i, role="x", instruction="i") for i in "abc"]
        )
        await store.append_event("r1", "plan.made", {})
        dispatch = {"status": TaskStatus.DISPATCHED, "attempts": 1}
        pending = (TaskStatus.PENDING,)
        moved = await store.transition(
            "r1",
            [
                Transition("a", 0, pending, dispatch, ("task.dispatched", {"t": "a"})),
                Transition("b", 0, pending, dispatch, ("task.dispatched", {"t": "b"})),
                # c has made no attempt yet: a transition for attempt 1 does not hold
                Transition("c", 1, pending, dispatch, ("task.dispatched", {"t": "c"})),
            ],
        )
        assert [m.status if m else None for m in moved] == [
            TaskStatus.DISPATCHED,
            TaskStatus.DISPATCHED,
            None,
        ]
        events = await store.events("r1")
        assert [(e.seq, e.type, e.data) for e in events[1:]] == [
            (2, "task.dispatched", {"t": "a"}),
            (3, "task.dispatched", {"t": "b"}),
        ]
        # A repeat (a redelivered result) does not hold: nothing written, no event.
        finish = {"status": TaskStatus.SUCCEEDED, "result": {"text": "ok"}}
        in_flight = (TaskStatus.DISPATCHED, TaskStatus.RUNNING)
        for expect in (TaskStatus.SUCCEEDED, None):
            [done] = await store.transition(
                "r1", [Transition("a", 1, in_flight, finish, ("task.finished", {"t": "a"}))]
            )
            assert (done.status if done else None) is expect
        assert (await store.get_task("r1", "a")).result == {"text": "ok"}
        assert [e.type for e in await store.events("r1", after=3)] == ["task.finished"]
        run, ready = await store.ready_tasks("r1")
        assert (run.id, ready) == ("r1", ["c"])
        # Nothing moves once the run has finished.
        await store.update_run("r1", expected=RunStatus.RUNNING, status=RunStatus.CANCELLED)
        [late] = await store.transition(
            "r1", [Transition("b", 1, in_flight, finish, ("task.finished", {"t": "b"}))]
        )
        assert late is None
        assert (await store.get_task("r1", "b")).status is TaskStatus.DISPATCHED
        with pytest.raises(NotFound):
            await store.transition("nope", [])
        with pytest.raises(NotFound):
            await store.transition("r1", [Transition("zz", 0, pending, {})])

    async def test_ready_tasks_and_a_run_update_with_its_event(self, store: WorkflowStore) -> None:
        await store.create_run(RunRecord(id="r1", goal="g", status=RunStatus.RUNNING))
        await store.put_tasks(
            "r1",
            [
                TaskRecord(run_id="r1", id="a", role="x", instruction="i"),
                TaskRecord(run_id="r1", id="b", role="x", instruction="i", depends_on=("a",)),
            ],
        )
        assert (await store.ready_tasks("r1"))[1] == ["a"]  # b waits for a
        await store.update_task("r1", "a", status=TaskStatus.SUCCEEDED)
        assert (await store.ready_tasks("r1"))[1] == ["b"]
        await store.update_task("r1", "b", status=TaskStatus.SUCCEEDED)
        assert (await store.ready_tasks("r1"))[1] is None  # all done
        await store.append_event("r1", "plan.made", {})
        done = ("run.succeeded", {"result": {"summary": "s"}})
        await store.update_run(
            "r1", expected=RunStatus.RUNNING, event=done, status=RunStatus.SUCCEEDED
        )
        with pytest.raises(Conflict):  # refused: no second event either
            await store.update_run(
                "r1", expected=RunStatus.RUNNING, event=done, status=RunStatus.FAILED
            )
        events = await store.events("r1")
        assert [(e.seq, e.type) for e in events] == [(1, "plan.made"), (2, "run.succeeded")]
        assert events[1].data == {"result": {"summary": "s"}}
        run, tasks = await store.get_run_and_tasks("r1")
        assert run.status is RunStatus.SUCCEEDED
        assert [t.id for t in tasks] == ["a", "b"]
        with pytest.raises(NotFound):
            await store.get_run_and_tasks("nope")


class TestMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[WorkflowStore]:
        async with open_store("memory://") as store:
            yield store


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[WorkflowStore]:
        async with open_store(f"sqlite:///{tmp_path}/wf.db") as store:
            yield store

    async def test_state_survives_reopening(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path}/wf.db"
        async with open_store(url) as store:
            await store.create_run(RunRecord(id="r1", goal="g", status=RunStatus.RUNNING))
            await store.append_event("r1", "plan", {"n": 3})
        async with open_store(url) as again:
            assert (await again.get_run("r1")).status is RunStatus.RUNNING
            assert [e.type for e in await again.events("r1")] == ["plan"]


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, postgres_url: str) -> AsyncIterator[WorkflowStore]:
        prefix = f"t{uuid.uuid4().hex[:10]}_"
        async with open_store(f"{postgres_url}?table_prefix={prefix}") as store:
            yield store
        import asyncpg

        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(
                f"DROP TABLE IF EXISTS {prefix}run_events, {prefix}tasks, {prefix}runs"
            )
        finally:
            await conn.close()


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="sqlite://"):
        open_store("mongodb://x")
