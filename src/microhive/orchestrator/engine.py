"""The orchestrator engine: goal -> plan -> sub-tasks dispatched in parallel -> result.

Everything it knows lives in the :class:`WorkflowStore`; everything it says goes
over the bus. That is what makes it restartable: a new engine on the same store
and bus resumes unfinished runs (:meth:`Orchestrator.start`), re-publishes the
sub-tasks that were in flight under the same message ids (the bus stores them
once) and takes the results that arrived while it was down from its durable queue
group. Sub-task state changes are compare-and-set transitions stored together
with the event that reports them (:meth:`WorkflowStore.transition`), so a result
delivered twice is applied and reported once, a finished sub-task is never
redone, and a crash never leaves a change its event stream does not show.

Cost per sub-task: dispatching a batch of ready sub-tasks is one store
transaction, then their publishes (in growing rounds, which the bus stores
together); a worker's ``started`` or result is one store transaction, and a
result then one light read (:meth:`WorkflowStore.ready_tasks`) unless it
unlocks something.

A run's life: ``pending`` -> ``planning`` (the planner model proposes a DAG; an
invalid one is re-asked with the reason, up to ``plan_attempts`` times) ->
``running`` (ready sub-tasks dispatched; each result unlocks its dependants; a
failed sub-task is retried up to ``max_attempts``, then the run fails with the
reason) -> ``succeeded`` / ``failed`` / ``cancelled``. The run's deadline and
budget bound all of it. A run submitted with its own plan skips planning: the
plan is checked, stored with the run and its sub-tasks, and the run is
``running`` before :meth:`Orchestrator.submit` returns (``plan.made`` says
``"source": "given"``); a restart adopts such a run's plan, never re-plans it.

Tracing: a run is the trace ``POST /runs`` arrived in (the run stores its server
span's ``traceparent``; that span has ``microhive.run_id``). Planning is an
``invoke_agent planner`` span, each sub-task sent a ``dispatch {role}`` span (the
worker's span is its child), and a deadline stop a ``deadline_exceeded`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio.lowlevel
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from microhive.bus import Bus, Delivery, Subscription
from microhive.context import CallContext
from microhive.errors import Conflict, InvalidInput, MicrohiveError, NotFound
from microhive.models.base import ModelProvider
from microhive.models.prompts import plan_schema, planning_messages
from microhive.models.types import AssistantMessage, ChatHooks, ResponseSchema, UserMessage
from microhive.orchestrator.messages import (
    ORCHESTRATOR_GROUP,
    RUN_EVENTS,
    TaskEvent,
    TaskMessage,
    parse_message,
    task_msg_id,
    task_subject,
)
from microhive.orchestrator.options import RunOptions, project_folder
from microhive.orchestrator.plan import Plan, PlanError, PlannedTask, parse_plan
from microhive.orchestrator.plan_file import given_plan
from microhive.orchestrator.report import run_result, run_view
from microhive.orchestrator.store import (
    RunEvent,
    RunRecord,
    RunStatus,
    TaskRecord,
    TaskStatus,
    Transition,
    WorkflowStore,
)
from microhive.tracing import (
    RUN_ID_ATTRIBUTE,
    agent_span,
    context_attributes,
    deadline_exceeded,
    set_run_id,
)

__all__ = ["Orchestrator", "RunOptions"]

log = logging.getLogger("microhive.orchestrator")
# OpenTelemetry's proxy: records to whichever provider the process installs.
_tracer = trace.get_tracer("microhive.orchestrator")

_IN_FLIGHT = (TaskStatus.DISPATCHED, TaskStatus.RUNNING)
# Worker progress -> the run event it is recorded as.
_PROGRESS_EVENTS = {
    "tool": "task.tool",
    "file": "file.written",
    "output": "task.output",
    "retry": "task.model_retry",
}


def _declared_outputs(run: RunRecord) -> dict[str, list[str]]:
    """Each sub-task's declared outputs, from the run's stored plan."""
    tasks = (run.plan or {}).get("tasks") or []
    return {
        str(t.get("id")): [str(o) for o in t.get("outputs") or ()]
        for t in tasks
        if isinstance(t, dict)
    }


def _task_records(run_id: str, plan: Plan) -> list[TaskRecord]:
    """The plan's sub-tasks as stored: every field a planned task and a record share."""
    shared = {f.name for f in dataclasses.fields(TaskRecord)} & set(PlannedTask.model_fields)
    records = []
    for task in plan.tasks:
        values = {name: getattr(task, name) for name in shared}
        values["inputs"] = dict(task.inputs)
        records.append(TaskRecord(run_id=run_id, **values))
    return records


@contextlib.contextmanager
def _in_run(
    run: RunRecord, name: str, attributes: Mapping[str, AttributeValue] | None = None
) -> Iterator[None]:
    """A span in the run's own trace (the one POST /runs started), whatever led here."""
    ctx = CallContext.from_headers(run.trace)
    attrs = {RUN_ID_ATTRIBUTE: run.id, **(attributes or {}), **context_attributes(ctx)}
    with ctx.activate(), _tracer.start_as_current_span(name, attributes=attrs):
        yield


class Orchestrator:
    """Runs goals to completion over a bus and a workflow store."""

    def __init__(
        self,
        *,
        store: WorkflowStore,
        bus: Bus,
        planner: ModelProvider,
        roles: Mapping[str, str],
        max_attempts: int = 2,
        plan_attempts: int = 3,
        concurrency: int = 32,
    ) -> None:
        if not roles:
            raise InvalidInput("the orchestrator needs at least one worker role")
        self.store = store
        self.bus = bus
        self.planner = planner
        self.roles = dict(roles)
        self.max_attempts = max_attempts
        self.plan_attempts = plan_attempts
        self._concurrency = concurrency
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Take worker events and resume every unfinished run."""
        await anyio.lowlevel.checkpoint()  # loads anyio's backend now, not in the first plan
        self._sub = await self.bus.subscribe(
            RUN_EVENTS,
            self._on_event,
            queue=ORCHESTRATOR_GROUP,
            start="beginning",
            concurrency=self._concurrency,
        )
        for run in await self.store.unfinished_runs():
            log.info("resuming run %s (%s)", run.id, run.status.value)
            self._spawn(self._resume(run))

    async def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._sub is not None:
            await self._sub.aclose()
            self._sub = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ public API

    async def submit(
        self,
        goal: str,
        options: RunOptions | None = None,
        *,
        plan: Plan | Mapping[str, Any] | list[Any] | None = None,
    ) -> RunRecord:
        """Accept a goal: stored durably before this returns, then planned in the background.

        With ``plan`` (a planner's answer's shape, see :func:`given_plan`) the planner
        is skipped: the plan is checked against the roles before anything is stored
        (PlanError), and stored with the run and its sub-tasks before this returns,
        so a restart never sends the run to the planner; dispatch starts at once.
        """
        goal = goal.strip()
        if not goal:
            raise InvalidInput("goal must not be empty")
        if len(goal) > 4000:
            raise InvalidInput(f"goal is {len(goal)} characters; at most 4000 are allowed")
        given: Plan | None = None
        if plan is not None:
            raw = plan.model_dump(mode="json") if isinstance(plan, Plan) else plan
            given = given_plan(raw, roles=self.roles)
        opts = options or RunOptions()
        base = CallContext.current()
        ctx = CallContext(
            trace=base.trace,
            hops=base.hops,
            max_hops=base.max_hops,
            deadline=time.time() + opts.timeout if opts.timeout else base.deadline,
            budget_steps=opts.budget_steps or base.budget_steps,
            budget_tokens=opts.budget_tokens or base.budget_tokens,
        )
        run = RunRecord(
            id=uuid.uuid4().hex,
            goal=goal,
            options=opts.to_dict(),
            trace=ctx.to_headers(),
            # A pending run with a plan is a given plan's: _resume adopts it, never re-plans.
            plan=None if given is None else {**given.model_dump(mode="json"), "source": "given"},
        )
        await self.store.create_run(run)
        set_run_id(run.id)  # on the POST /runs server span: `microhive trace RUN_ID` finds it
        await self._event(run.id, "run.created", {"goal": goal, "trace_id": ctx.trace_id})
        if given is None:
            self._spawn(self._plan(run))
            return run
        self._arm_deadline(run.id, ctx.deadline)
        run = await self._adopt_plan(run, [])
        self._spawn(self._dispatch_given(run.id))
        return run

    async def cancel(self, run_id: str) -> RunRecord:
        run = await self.store.get_run(run_id)
        if run.status.finished:
            raise Conflict(f"run {run_id} is already {run.status.value}")
        return await self._finish(run_id, RunStatus.CANCELLED, error="cancelled by request")

    async def get(self, run_id: str) -> dict[str, Any]:
        return run_view(*await self.store.get_run_and_tasks(run_id))

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[RunEvent]:
        """Every event of a run from ``after`` on, live, ending after the run's last event."""
        await self.store.get_run(run_id)
        while True:
            events = await self.store.events(run_id, after=after)
            for event in events:
                after = event.seq
                yield event
                if event.type in ("run.succeeded", "run.failed", "run.cancelled"):
                    return
            async with self._changed:
                # Woken by this process's own events; the timeout covers other replicas.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=0.5)

    async def wait(self, run_id: str, within: float = 60.0) -> RunRecord:
        """The run once it has finished (for scripts and tests)."""
        async with asyncio.timeout(within):
            async for _ in self.follow(run_id):
                pass
        return await self.store.get_run(run_id)

    # -------------------------------------------------------------- planning

    async def _plan(self, run: RunRecord) -> None:
        try:
            await self._plan_run(run)
        except MicrohiveError as exc:
            await self._finish(run.id, RunStatus.FAILED, error=f"planning failed: {exc.message}")
        except Exception as exc:
            log.exception("planning run %s crashed", run.id)
            await self._finish(run.id, RunStatus.FAILED, error=f"planning crashed: {exc!r}")

    async def _plan_run(self, run: RunRecord) -> None:
        run = await self.store.update_run(
            run.id, expected=RunStatus.PENDING, status=RunStatus.PLANNING
        )
        ctx = CallContext.from_headers(run.trace)
        self._arm_deadline(run.id, ctx.deadline)
        messages = planning_messages(run.goal, self.roles)
        # Structured output: the plan's schema (roles as an enum, every list and
        # string bounded) goes to the provider, which makes a small model keep to it.
        roles = list(self.roles)
        schema = ResponseSchema(
            "plan",
            plan_schema(roles),
            "The sub-tasks of the goal, in the order they can run.",
            loose=plan_schema(roles, loose=True),
        )
        hooks = ChatHooks(on_text=_Batched(self, run.id).add, on_retry=self._retry_hook(run.id))
        plan: Plan | None = None
        reason = ""
        answer = ""
        with (
            ctx.activate(),
            agent_span(
                "planner",
                run_id=run.id,
                provider_name=self.planner.provider,
                model=self.planner.model,
                ctx=ctx,
            ) as span,
        ):
            for attempt in range(1, self.plan_attempts + 1):
                asked = messages
                if reason:
                    asked = [
                        *messages,
                        AssistantMessage(answer[:8000]),
                        UserMessage(f"That plan was refused: {reason}. Send a corrected plan."),
                    ]
                result = await self.planner.chat(
                    asked, context=ctx, response_schema=schema, hooks=hooks
                )
                answer = result.text
                span.set("microhive.plan.attempts", attempt)
                try:
                    plan = parse_plan(result.text, roles=self.roles)
                    break
                except PlanError as exc:
                    reason = exc.message
                    span.span.add_event("plan_refused", {"microhive.reason": reason})
                    await self._event(
                        run.id, "plan.refused", {"attempt": attempt, "reason": reason}
                    )
            if plan is None:
                raise PlanError(f"no valid plan after {self.plan_attempts} attempts: {reason}")
            span.set("microhive.plan.tasks", len(plan.tasks))
        project = project_folder(run.goal, run.id)
        await self.store.put_tasks(
            run.id,
            [
                TaskRecord(
                    run_id=run.id,
                    id=t.id,
                    role=t.role,
                    instruction=t.instruction,
                    depends_on=t.depends_on,
                    inputs=dict(t.inputs),
                )
                for t in plan.tasks
            ],
        )
        plan_data = plan.model_dump(mode="json")
        made = (
            "plan.made",
            {"tasks": plan_data["tasks"], "project": project, "source": "planner"},
        )
        await self.store.update_run(
            run.id,
            expected=RunStatus.PLANNING,
            event=made,
            status=RunStatus.RUNNING,
            plan=plan_data,
        )
        await self._notify()
        await self._advance(run.id)

    async def _adopt_plan(self, run: RunRecord, stored: list[TaskRecord]) -> RunRecord:
        """A given plan (stored with its run) as the run's sub-tasks, and the run running
        with ``plan.made`` -- what planning ends with, without the planner. Picks up
        where a crash left it: the sub-tasks already ``stored`` are not added again."""
        assert run.plan is not None
        plan = Plan.model_validate(run.plan)
        if not stored:
            await self.store.put_tasks(run.id, _task_records(run.id, plan))
        data = {
            "tasks": run.plan["tasks"],
            "project": project_folder(run.goal, run.id),
            "source": "given",
        }
        run = await self.store.update_run(
            run.id, expected=run.status, event=("plan.made", data), status=RunStatus.RUNNING
        )
        await self._notify()
        return run

    async def _dispatch_given(self, run_id: str) -> None:
        """Dispatch a given plan's first sub-tasks (in the background of ``submit``)."""
        try:
            await self._advance(run_id)
        except MicrohiveError as exc:
            await self._finish(run_id, RunStatus.FAILED, error=f"dispatch failed: {exc.message}")
        except Exception as exc:
            log.exception("dispatching run %s crashed", run_id)
            await self._finish(run_id, RunStatus.FAILED, error=f"dispatch crashed: {exc!r}")

    # ------------------------------------------------------------- dispatch

    async def _advance(self, run_id: str) -> None:
        """Dispatch every ready sub-task; finish the run when every one is done."""
        await self._advance_with(*await self.store.get_run_and_tasks(run_id))

    async def _advance_with(self, run: RunRecord, tasks: list[TaskRecord]) -> None:
        if run.status is not RunStatus.RUNNING:
            return
        done = {t.id for t in tasks if t.status is TaskStatus.SUCCEEDED}
        if len(done) == len(tasks):
            await self._complete(run, tasks)
            return
        ready = [t for t in tasks if t.status is TaskStatus.PENDING and set(t.depends_on) <= done]
        if ready:
            await self._dispatch(run, ready, {t.id: t for t in tasks})

    async def _dispatch(
        self, run: RunRecord, ready: list[TaskRecord], by_id: Mapping[str, TaskRecord]
    ) -> None:
        """Mark the ready sub-tasks dispatched (one transaction), then publish them.

        A crash in between leaves them dispatched and unpublished, which a resumed
        orchestrator publishes. One that another result handler dispatched first
        is left out (its transition does not hold).
        """
        moved = await self.store.transition(
            run.id,
            [
                Transition(
                    t.id,
                    t.attempts,
                    (TaskStatus.PENDING,),
                    {"status": TaskStatus.DISPATCHED, "attempts": t.attempts + 1},
                    ("task.dispatched", {"task": t.id, "role": t.role, "attempt": t.attempts + 1}),
                )
                for t in ready
            ],
        )
        await self._notify()
        await self._publish_all(run, [t for t in moved if t is not None], by_id)

    async def _publish_all(
        self, run: RunRecord, tasks: list[TaskRecord], by_id: Mapping[str, TaskRecord]
    ) -> None:
        """Publish in rounds of 1, 2, 4, ... sub-tasks: the first go out at once, and
        the later ones, published together, share the bus's transactions (and fsyncs)."""
        start, size = 0, 1
        while start < len(tasks):
            chunk = tasks[start : start + size]
            await asyncio.gather(*(self._publish_task(run, t, by_id) for t in chunk))
            start, size = start + size, size * 2

    async def _publish_task(
        self, run: RunRecord, task: TaskRecord, by_id: Mapping[str, TaskRecord]
    ) -> None:
        documents = {dep: str((by_id[dep].result or {}).get("text", "")) for dep in task.depends_on}
        declared = _declared_outputs(run)
        message = TaskMessage(
            run_id=run.id,
            task_id=task.id,
            role=task.role,
            attempt=task.attempts,
            goal=run.goal,
            instruction=task.instruction,
            inputs=task.inputs,
            project=project_folder(run.goal, run.id),
            documents=documents,
            model=run.options.get("models", {}).get(task.role),
            outputs=declared.get(task.id, []),
            dependency_outputs=[o for dep in task.depends_on for o in declared.get(dep, [])],
        )
        with _in_run(
            run,
            f"dispatch {task.role}",
            {"microhive.task_id": task.id, "microhive.task.attempt": task.attempts},
        ):
            await self.bus.publish(
                task_subject(task.role),
                message.model_dump(mode="json"),
                msg_id=task_msg_id(run.id, task.id, task.attempts),
            )

    async def _resume(self, run: RunRecord) -> None:
        ctx = CallContext.from_headers(run.trace)
        self._arm_deadline(run.id, ctx.deadline)
        tasks = await self.store.get_tasks(run.id)
        if run.status is not RunStatus.RUNNING and run.plan is not None:
            run = await self._adopt_plan(run, tasks)  # a given plan: never the planner's
        if run.status is not RunStatus.RUNNING and not tasks:
            if run.status is RunStatus.PLANNING:
                run = await self.store.update_run(
                    run.id, expected=RunStatus.PLANNING, status=RunStatus.PENDING
                )
            await self._plan(run)
            return
        if run.status is not RunStatus.RUNNING:
            run = await self.store.update_run(run.id, status=RunStatus.RUNNING)
        # Same message ids: the bus keeps one copy of each whose first publish landed.
        in_flight = [t for t in tasks if t.status in _IN_FLIGHT]
        await self._publish_all(run, in_flight, {t.id: t for t in tasks})
        await self._advance(run.id)

    # --------------------------------------------------------- worker events

    async def _on_event(self, delivery: Delivery) -> None:
        event = parse_message(TaskEvent, delivery.json())
        changes: dict[str, Any]
        data: dict[str, Any]
        if event.type == "started":
            changes = {"status": TaskStatus.RUNNING}
            data = {"task": event.task_id, "worker": event.worker}
            await self._move(event, (TaskStatus.DISPATCHED,), changes, ("task.started", data))
        elif event.type in _PROGRESS_EVENTS:
            await self._on_progress(event)
        elif event.ok:
            result = event.result or {}
            changes = {"status": TaskStatus.SUCCEEDED, "result": result}
            data = {"task": event.task_id, "stop": result.get("stop"), "steps": result.get("steps")}
            if await self._move(event, _IN_FLIGHT, changes, ("task.finished", data)) is not None:
                await self._after_success(event.run_id)
        else:
            await self._on_failure(event)

    async def _move(
        self,
        event: TaskEvent,
        expected: tuple[TaskStatus, ...],
        changes: dict[str, Any],
        record: tuple[str, dict[str, Any]],
    ) -> TaskRecord | None:
        """Move the event's sub-task on and record ``record``, in one transaction.

        None when it does not hold: news of a finished run, of an earlier attempt,
        or a repeat (a redelivered message) -- applied once, recorded once.
        """
        transition = Transition(event.task_id, event.attempt, expected, changes, record)
        try:
            [moved] = await self.store.transition(event.run_id, [transition])
        except NotFound as exc:
            raise InvalidInput(f"event for an unknown run or sub-task: {exc.message}") from None
        if moved is not None:
            await self._notify()
        return moved

    async def _on_progress(self, event: TaskEvent) -> None:
        try:
            run = await self.store.get_run(event.run_id)
            task = await self.store.get_task(event.run_id, event.task_id)
        except NotFound as exc:
            raise InvalidInput(f"event for an unknown run or sub-task: {exc.message}") from None
        if run.status.finished or task.attempts != event.attempt:
            return  # late news of a finished run or of an earlier attempt
        name = _PROGRESS_EVENTS[event.type]
        await self._event(run.id, name, {"task": task.id, **event.detail})

    async def _after_success(self, run_id: str) -> None:
        """Stop the run when its token budget is spent across all sub-tasks, else go on.

        Most results unlock nothing: where the sub-tasks stand (a light read) says
        whether the whole of them must be read to dispatch or finish.
        """
        run, ready = await self.store.ready_tasks(run_id)
        budget = run.options.get("budget_tokens")
        if not budget:
            if run.status is RunStatus.RUNNING and (ready is None or ready):
                await self._advance(run_id)
            return
        run, tasks = await self.store.get_run_and_tasks(run_id)
        spent = 0
        for t in tasks:
            usage = (t.result or {}).get("usage") or {}
            spent += int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        if spent > budget:
            await self._finish(
                run.id, RunStatus.FAILED, error=f"token budget exhausted: {spent} of {budget}"
            )
            return
        await self._advance_with(run, tasks)

    async def _on_failure(self, event: TaskEvent) -> None:
        result = event.result or {}
        reason = event.error or str(result.get("detail") or "sub-task failed")
        data: dict[str, Any] = {"task": event.task_id, "attempt": event.attempt, "reason": reason}
        changes: dict[str, Any]
        if event.attempt < self.max_attempts and event.retryable:
            changes = {"status": TaskStatus.PENDING, "error": reason}
            if await self._move(event, _IN_FLIGHT, changes, ("task.retry", data)) is not None:
                await self._advance(event.run_id)
            return
        changes = {"status": TaskStatus.FAILED, "error": reason}
        data = {"task": event.task_id, "reason": reason}
        if await self._move(event, _IN_FLIGHT, changes, ("task.failed", data)) is None:
            return
        attempts = f"after {event.attempt} attempts" if event.retryable else "(not retried)"
        await self._finish(
            event.run_id,
            RunStatus.FAILED,
            error=f"sub-task {event.task_id!r} failed {attempts}: {reason}",
        )

    # ------------------------------------------------------------- finishing

    async def _complete(self, run: RunRecord, tasks: list[TaskRecord]) -> None:
        # Workers check declared outputs before they report success; a result that
        # does not confirm them (an older or foreign worker) does not make a success.
        declared = _declared_outputs(run)
        for task in tasks:
            if declared.get(task.id) and not (task.result or {}).get("outputs"):
                await self._finish(
                    run.id,
                    RunStatus.FAILED,
                    error=f"sub-task {task.id!r} declares outputs "
                    f"({', '.join(declared[task.id])}) that its result does not confirm",
                )
                return
        await self._finish(run.id, RunStatus.SUCCEEDED, result=run_result(run, tasks))

    async def _finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> RunRecord:
        for _ in range(5):  # the run may move (planning -> running) under us; try again
            run = await self.store.get_run(run_id)
            if run.status.finished:
                return run
            ended = (f"run.{status.value}", {"error": error, "result": result})
            try:
                run = await self.store.update_run(
                    run_id,
                    expected=run.status,
                    event=ended,
                    status=status,
                    error=error,
                    result=result,
                )
                break
            except Conflict:
                continue
        else:
            return await self.store.get_run(run_id)
        await self._notify()
        timer = self._timers.pop(run_id, None)
        if timer is not None:
            timer.cancel()
        if status is not RunStatus.SUCCEEDED:
            for task in await self.store.get_tasks(run_id):
                if task.status is TaskStatus.PENDING:
                    with contextlib.suppress(Conflict):
                        await self.store.update_task(
                            run_id, task.id, expected=TaskStatus.PENDING, status=TaskStatus.SKIPPED
                        )
        return run

    def _arm_deadline(self, run_id: str, deadline: float | None) -> None:
        if deadline is None or run_id in self._timers:
            return
        loop = asyncio.get_running_loop()

        def expire() -> None:
            self._timers.pop(run_id, None)
            self._spawn(self._expire(run_id, deadline))

        self._timers[run_id] = loop.call_later(max(0.0, deadline - time.time()), expire)

    async def _expire(self, run_id: str, deadline: float) -> None:
        """The run's deadline passed: stop it, and say so on its trace."""
        run = await self.store.get_run(run_id)
        if run.status.finished:
            return
        with _in_run(run, "run deadline"):
            deadline_exceeded(deadline, overdue=max(0.0, time.time() - deadline))
            await self._finish(run_id, RunStatus.FAILED, error="deadline exceeded: run stopped")

    def _retry_hook(self, run_id: str) -> Callable[[int, str, float], Awaitable[None]]:
        async def on_retry(attempt: int, reason: str, delay: float) -> None:
            data = {"task": None, "attempt": attempt, "reason": reason[:500], "delay": delay}
            await self._event(run_id, "plan.model_retry", data)

        return on_retry

    async def _event(self, run_id: str, type: str, data: dict[str, Any]) -> None:
        await self.store.append_event(run_id, type, data)
        await self._notify()

    async def _notify(self) -> None:
        """Wake this process's event streams: the run's events changed."""
        async with self._changed:
            self._changed.notify_all()


class _Batched:
    """The planner's streamed text as ``plan.output`` run events, about once a second."""

    def __init__(self, orch: Orchestrator, run_id: str, interval: float = 1.0) -> None:
        self._orch = orch
        self._run_id = run_id
        self._interval = interval
        self._pieces: list[str] = []
        self._sent = time.monotonic()

    async def add(self, text: str) -> None:
        self._pieces.append(text)
        if time.monotonic() - self._sent >= self._interval:
            self._sent = time.monotonic()
            text, self._pieces = "".join(self._pieces), []
            await self._orch._event(self._run_id, "plan.output", {"text": text})
