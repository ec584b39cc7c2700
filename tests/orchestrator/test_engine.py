"""The orchestrator engine with real workers on an in-process bus and scripted models."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from microhive.agents.toolbox import LocalToolbox
from microhive.agents.worker import Worker
from microhive.bus import Bus
from microhive.context import CallContext
from microhive.models.base import ModelProvider
from microhive.models.scripted import Reply, ScriptedModel
from microhive.models.types import ChatRequest, ChatResult, ToolCall
from microhive.orchestrator import RunStatus, TaskStatus, WorkflowStore
from microhive.orchestrator.engine import Orchestrator, RunOptions
from microhive.orchestrator.messages import TaskEvent, run_subject
from tests.conftest import eventually

ROLES = {"researcher": "finds material", "writer": "writes the brief"}

PLAN = {
    "tasks": [
        {"id": "research-a", "role": "researcher", "instruction": "research bees"},
        {"id": "research-b", "role": "researcher", "instruction": "research gardens"},
        {
            "id": "write",
            "role": "writer",
            "instruction": "write the report",
            "depends_on": ["research-a", "research-b"],
        },
    ]
}


async def _mesh(
    bus: Bus,
    store: WorkflowStore,
    planner: ModelProvider,
    worker_models: dict[str, ModelProvider],
    toolbox: LocalToolbox | None = None,
) -> tuple[Orchestrator, list[Worker]]:
    orch = Orchestrator(store=store, bus=bus, planner=planner, roles=ROLES, max_attempts=2)
    await orch.start()
    workers = []
    for role, model in worker_models.items():

        async def tools(_: object, box: LocalToolbox | None = toolbox) -> LocalToolbox | None:
            return box

        worker = Worker(bus=bus, role=role, model_for=lambda _, m=model: m, toolbox_for=tools)
        await worker.start()
        workers.append(worker)
    return orch, workers


async def _close(orch: Orchestrator, workers: list[Worker]) -> None:
    for w in workers:
        await w.aclose()
    await orch.aclose()


async def test_plan_runs_in_dependency_order_and_succeeds(bus: Bus, store: WorkflowStore) -> None:
    written: dict[str, str] = {}
    box = LocalToolbox()

    def write(path: str, content: str, idempotency_key: str = "") -> dict[str, Any]:
        """Write a file."""
        written[path] = content
        return {"path": path, "key": idempotency_key}

    box.add(write)
    writer_model = ScriptedModel(
        [Reply(tool_calls=(ToolCall("", "write", {"path": "report.md", "content": "# R"}),)), "ok"]
    )
    orch, workers = await _mesh(
        bus,
        store,
        ScriptedModel([json.dumps(PLAN)]),
        {"researcher": ScriptedModel(["found it"], cycle=True), "writer": writer_model},
        box,
    )
    try:
        run = await orch.submit("a brief about bees", RunOptions(timeout=30))
        done = await orch.wait(run.id, within=20)
        assert done.status is RunStatus.SUCCEEDED, done.error
        assert done.result is not None
        assert done.result["files"] == ["report.md"]
        assert written == {"report.md": "# R"}
        tasks = {t.id: t for t in await store.get_tasks(run.id)}
        assert all(t.status is TaskStatus.SUCCEEDED for t in tasks.values())
        assert all(t.attempts == 1 for t in tasks.values())
        # The writer saw both research results as documents.
        user = "\n".join(m.content for m in writer_model.requests[0].messages[1:])
        assert user.count("found it") == 2
        types = [e.type for e in await store.events(run.id)]
        assert types[0] == "run.created"
        assert "plan.made" in types
        assert types[-1] == "run.succeeded"
        assert types.index("task.finished") < max(
            i for i, t in enumerate(types) if t == "task.dispatched"
        )
        assert "file.written" in types
        # The idempotency key is derived from the sub-task, so a redo is applied once.
        assert tasks["write"].result is not None
    finally:
        await _close(orch, workers)


class _GatedModel(ScriptedModel):
    """Answers only once the gate opens: keeps a sub-task in flight while a test looks."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__(["written"], cycle=True)
        self.gate = gate

    async def _chat(self, request: ChatRequest) -> ChatResult:
        await self.gate.wait()
        return await super()._chat(request)


async def test_worker_news_that_arrives_twice_is_applied_and_recorded_once(
    bus: Bus, store: WorkflowStore
) -> None:
    plan = {
        "tasks": [
            {"id": "a", "role": "researcher", "instruction": "dig"},
            {"id": "b", "role": "writer", "instruction": "write", "depends_on": ["a"]},
        ]
    }
    gate = asyncio.Event()
    orch, workers = await _mesh(
        bus,
        store,
        ScriptedModel([json.dumps(plan)]),
        {"researcher": ScriptedModel(["found it"]), "writer": _GatedModel(gate)},
    )
    try:
        run = await orch.submit("twice")

        async def b_in_flight() -> bool:
            tasks = {t.id: t.status for t in await store.get_tasks(run.id)}
            return tasks.get("b") in (TaskStatus.DISPATCHED, TaskStatus.RUNNING)

        await eventually(b_in_flight, what="b dispatched after a finished")
        assert orch._sub is not None
        seen = orch._sub.acked
        # A redelivery of a's news (as after a crash before the ack), under new ids.
        for kind, extra in (("started", {}), ("result", {"result": {"text": "again"}})):
            event = TaskEvent(type=kind, run_id=run.id, task_id="a", attempt=1, **extra)
            await bus.publish(run_subject(run.id, kind), event.model_dump(mode="json"))

        async def handled() -> bool:
            assert orch._sub is not None
            return orch._sub.acked >= seen + 2

        await eventually(handled, what="the repeats handled")
        counts = Counter(
            (e.type, e.data.get("task")) for e in await store.events(run.id) if "task" in e.data
        )
        # At most once: the first "started" may itself lose the race with a's result
        # (the orchestrator takes events concurrently), and then it is not recorded.
        assert counts[("task.started", "a")] <= 1
        assert counts[("task.finished", "a")] == 1
        assert counts[("task.dispatched", "b")] == 1
        assert (await store.get_task(run.id, "a")).result != {"text": "again"}
        gate.set()
        assert (await orch.wait(run.id, within=10)).status is RunStatus.SUCCEEDED
    finally:
        gate.set()
        await _close(orch, workers)


async def test_bad_plans_are_reasked_then_refused(bus: Bus, store: WorkflowStore) -> None:
    cyclic = {
        "tasks": [
            {"id": "a", "role": "writer", "instruction": "x", "depends_on": ["b"]},
            {"id": "b", "role": "writer", "instruction": "x", "depends_on": ["a"]},
        ]
    }
    unknown = {"tasks": [{"id": "a", "role": "poet", "instruction": "x"}]}
    planner = ScriptedModel([json.dumps(cyclic), json.dumps(unknown), "not json"])
    orch, workers = await _mesh(bus, store, planner, {})
    try:
        run = await orch.submit("loop forever")
        done = await orch.wait(run.id, within=10)
        assert done.status is RunStatus.FAILED
        assert done.error is not None
        assert "no valid plan after 3 attempts" in done.error
        reasons = [e.data["reason"] for e in await store.events(run.id) if e.type == "plan.refused"]
        assert "cycle" in reasons[0]
        assert "unknown role 'poet'" in reasons[1]
        # The planner was told why its plan was refused.
        assert "cycle" in planner.requests[1].messages[-1].content
    finally:
        await _close(orch, workers)


async def test_failing_subtask_is_retried_then_fails_the_run(
    bus: Bus, store: WorkflowStore
) -> None:
    plan = {"tasks": [{"id": "only", "role": "researcher", "instruction": "loop"}]}
    looping = ScriptedModel([Reply(tool_calls=(ToolCall("", "nothing", {}),))], cycle=True)
    orch, workers = await _mesh(
        bus, store, ScriptedModel([json.dumps(plan)]), {"researcher": looping}
    )
    workers[0].max_steps = 2
    try:
        run = await orch.submit("never finishes")
        done = await orch.wait(run.id, within=10)
        assert done.status is RunStatus.FAILED
        assert done.error is not None
        assert "failed after 2 attempts" in done.error
        assert "max_steps" in done.error
        types = [e.type for e in await store.events(run.id)]
        assert "task.retry" in types
        assert (await store.get_task(run.id, "only")).attempts == 2
    finally:
        await _close(orch, workers)


async def test_run_over_its_deadline_is_stopped_with_the_reason(
    bus: Bus, store: WorkflowStore
) -> None:
    plan = {"tasks": [{"id": "slow", "role": "researcher", "instruction": "take ages"}]}
    slow = ScriptedModel([Reply("late", delay=30)])
    orch, workers = await _mesh(bus, store, ScriptedModel([json.dumps(plan)]), {"researcher": slow})
    try:
        run = await orch.submit("too slow", RunOptions(timeout=0.5))
        done = await orch.wait(run.id, within=10)
        assert done.status is RunStatus.FAILED
        assert done.error is not None
        assert "deadline" in done.error
    finally:
        await _close(orch, workers)


async def test_cancel(bus: Bus, store: WorkflowStore) -> None:
    plan = {"tasks": [{"id": "slow", "role": "researcher", "instruction": "take ages"}]}
    slow = ScriptedModel([Reply("late", delay=30)])
    orch, workers = await _mesh(bus, store, ScriptedModel([json.dumps(plan)]), {"researcher": slow})
    try:
        run = await orch.submit("cancel me")
        cancelled = await orch.cancel(run.id)
        assert cancelled.status is RunStatus.CANCELLED
        assert (await orch.wait(run.id, within=5)).status is RunStatus.CANCELLED
    finally:
        await _close(orch, workers)


async def test_run_keeps_the_callers_trace(bus: Bus, store: WorkflowStore) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("t")
    plan = {"tasks": [{"id": "one", "role": "researcher", "instruction": "x"}]}
    orch, workers = await _mesh(
        bus, store, ScriptedModel([json.dumps(plan)]), {"researcher": ScriptedModel(["ok"])}
    )
    try:
        with tracer.start_as_current_span("http"):
            edge = CallContext.new()
            with edge.activate():
                run = await orch.submit("trace me")
        info = await orch.get(run.id)
        assert info["trace_id"] == edge.trace_id
        await orch.wait(run.id, within=10)
    finally:
        await _close(orch, workers)


def test_options_are_checked() -> None:
    from microhive.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown run options: colour"):
        RunOptions.from_dict({"colour": "red"})
    with pytest.raises(InvalidInput, match="timeout"):
        RunOptions.from_dict({"timeout": -1})
