"""The orchestrator engine: goal -> plan -> sub-tasks dispatched in parallel -> result.

Everything it knows lives in the :class:`WorkflowStore`; everything it says goes
over the bus. That is what makes it restartable: a new engine on the same store
and bus resumes unfinished runs (:meth:`Orchestrator.start`), re-publishes the
sub-tasks that were in flight under the same message ids (the bus stores them
once) and takes the results that arrived while it was down from its durable queue
group. Sub-task state changes are compare-and-set, so a result delivered twice is
applied once and a finished sub-task is never redone.

A run's life: ``pending`` -> ``planning`` (the planner model proposes a DAG; an
invalid one is re-asked with the reason, up to ``plan_attempts`` times) ->
``running`` (ready sub-tasks dispatched; each result unlocks its dependants; a
failed sub-task is retried up to ``max_attempts``, then the run fails with the
reason) -> ``succeeded`` / ``failed`` / ``cancelled``. The run's deadline and
budget bound all of it.

Tracing: a run is the trace ``POST /runs`` arrived in (the run stores its server
span's ``traceparent``; that span has ``microhive.run_id``). Planning is an
``invoke_agent planner`` span, each sub-task sent a ``dispatch {role}`` span (the
worker's span is its child), and a deadline stop a ``deadline_exceeded`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from microhive.bus import Bus, Delivery, Subscription
from microhive.context import CallContext
from microhive.errors import Conflict, InvalidInput, MicrohiveError, NotFound
from microhive.models.base import ModelProvider
from microhive.models.prompts import planning_messages
from microhive.models.types import UserMessage
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
from microhive.orchestrator.plan import Plan, PlanError, parse_plan
from microhive.orchestrator.store import (
    RunEvent,
    RunRecord,
    RunStatus,
    TaskRecord,
    TaskStatus,
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

_FINISHED_TASK = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED)


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

    async def submit(self, goal: str, options: RunOptions | None = None) -> RunRecord:
        """Accept a goal: stored durably before this returns, then planned in the background."""
        goal = goal.strip()
        if not goal:
            raise InvalidInput("goal must not be empty")
        if len(goal) > 4000:
            raise InvalidInput(f"goal is {len(goal)} characters; at most 4000 are allowed")
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
            id=uuid.uuid4().hex, goal=goal, options=opts.to_dict(), trace=ctx.to_headers()
        )
        await self.store.create_run(run)
        set_run_id(run.id)  # on the POST /runs server span: `microhive trace RUN_ID` finds it
        await self._event(run.id, "run.created", {"goal": goal, "trace_id": ctx.trace_id})
        self._spawn(self._plan(run))
        return run

    async def cancel(self, run_id: str) -> RunRecord:
        run = await self.store.get_run(run_id)
        if run.status.finished:
            raise Conflict(f"run {run_id} is already {run.status.value}")
        return await self._finish(run_id, RunStatus.CANCELLED, error="cancelled by request")

    async def get(self, run_id: str) -> dict[str, Any]:
        run = await self.store.get_run(run_id)
        tasks = await self.store.get_tasks(run_id)
        return {
            "id": run.id,
            "goal": run.goal,
            "status": run.status.value,
            "error": run.error,
            "result": run.result,
            "plan": run.plan,
            "project": project_folder(run.goal, run.id),
            "trace_id": CallContext.from_headers(run.trace).trace_id,
            "created_at": run.created_at,
            "updated_at": run.updated_at,
            "tasks": [
                {
                    "id": t.id,
                    "role": t.role,
                    "status": t.status.value,
                    "attempts": t.attempts,
                    "depends_on": list(t.depends_on),
                    "error": t.error,
                    "stop": (t.result or {}).get("stop"),
                }
                for t in tasks
            ],
        }

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
        plan: Plan | None = None
        reason = ""
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
                        UserMessage(f"That plan was refused: {reason}. Send a corrected plan."),
                    ]
                result = await self.planner.chat(asked, context=ctx)
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
        await self.store.update_run(
            run.id, expected=RunStatus.PLANNING, status=RunStatus.RUNNING, plan=plan_data
        )
        await self._event(run.id, "plan.made", {"tasks": plan_data["tasks"], "project": project})
        await self._advance(run.id)

    # ------------------------------------------------------------- dispatch

    async def _advance(self, run_id: str) -> None:
        """Dispatch every ready sub-task; finish the run when every one is done."""
        run = await self.store.get_run(run_id)
        if run.status is not RunStatus.RUNNING:
            return
        tasks = await self.store.get_tasks(run_id)
        done = {t.id for t in tasks if t.status is TaskStatus.SUCCEEDED}
        if len(done) == len(tasks):
            await self._complete(run, tasks)
            return
        by_id = {t.id: t for t in tasks}
        for task in tasks:
            if task.status is TaskStatus.PENDING and set(task.depends_on) <= done:
                await self._dispatch(run, task, by_id)

    async def _dispatch(
        self, run: RunRecord, task: TaskRecord, by_id: Mapping[str, TaskRecord]
    ) -> None:
        try:
            task = await self.store.update_task(
                run.id,
                task.id,
                expected=TaskStatus.PENDING,
                status=TaskStatus.DISPATCHED,
                attempts=task.attempts + 1,
            )
        except Conflict:
            return  # another result handler dispatched it first
        await self._publish_task(run, task, by_id)
        await self._event(
            run.id,
            "task.dispatched",
            {"task": task.id, "role": task.role, "attempt": task.attempts},
        )

    async def _publish_task(
        self, run: RunRecord, task: TaskRecord, by_id: Mapping[str, TaskRecord]
    ) -> None:
        documents = {dep: str((by_id[dep].result or {}).get("text", "")) for dep in task.depends_on}
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
        if run.status is not RunStatus.RUNNING and not tasks:
            if run.status is RunStatus.PLANNING:
                run = await self.store.update_run(
                    run.id, expected=RunStatus.PLANNING, status=RunStatus.PENDING
                )
            await self._plan(run)
            return
        if run.status is not RunStatus.RUNNING:
            run = await self.store.update_run(run.id, status=RunStatus.RUNNING)
        by_id = {t.id: t for t in tasks}
        for task in tasks:
            if task.status in (TaskStatus.DISPATCHED, TaskStatus.RUNNING):
                # Same message id: the bus keeps one copy if the first publish landed.
                await self._publish_task(run, task, by_id)
        await self._advance(run.id)

    # --------------------------------------------------------- worker events

    async def _on_event(self, delivery: Delivery) -> None:
        event = parse_message(TaskEvent, delivery.json())
        try:
            run = await self.store.get_run(event.run_id)
            task = await self.store.get_task(event.run_id, event.task_id)
        except NotFound as exc:
            raise InvalidInput(f"event for an unknown run or sub-task: {exc.message}") from None
        if run.status.finished or task.attempts != event.attempt:
            return  # late news of a finished run or of an earlier attempt
        if event.type == "started":
            with contextlib.suppress(Conflict):
                await self.store.update_task(
                    run.id, task.id, expected=TaskStatus.DISPATCHED, status=TaskStatus.RUNNING
                )
            await self._event(run.id, "task.started", {"task": task.id, "worker": event.worker})
        elif event.type in ("tool", "file"):
            name = "file.written" if event.type == "file" else "task.tool"
            await self._event(run.id, name, {"task": task.id, **event.detail})
        else:
            await self._on_result(run, task, event)

    async def _settle(self, task: TaskRecord, **changes: Any) -> TaskRecord | None:
        """Move an in-flight sub-task on; None if it already moved (a duplicate result).

        A ``started`` event handled concurrently may flip DISPATCHED to RUNNING under
        us, so a conflict re-reads and tries again while the task is still in flight.
        """
        attempt = task.attempts
        for _ in range(5):
            if task.attempts != attempt or task.status not in (
                TaskStatus.DISPATCHED,
                TaskStatus.RUNNING,
            ):
                return None
            try:
                return await self.store.update_task(
                    task.run_id, task.id, expected=task.status, **changes
                )
            except Conflict:
                task = await self.store.get_task(task.run_id, task.id)
        return None

    async def _on_result(self, run: RunRecord, task: TaskRecord, event: TaskEvent) -> None:
        result = event.result or {}
        if event.ok:
            if await self._settle(task, status=TaskStatus.SUCCEEDED, result=result) is None:
                return
            await self._charge(run, result)
            await self._event(
                run.id,
                "task.finished",
                {"task": task.id, "stop": result.get("stop"), "steps": result.get("steps")},
            )
            await self._advance(run.id)
            return
        reason = event.error or str(result.get("detail") or "sub-task failed")
        if task.attempts < self.max_attempts:
            if await self._settle(task, status=TaskStatus.PENDING, error=reason) is None:
                return
            await self._event(
                run.id, "task.retry", {"task": task.id, "attempt": task.attempts, "reason": reason}
            )
            await self._advance(run.id)
            return
        if await self._settle(task, status=TaskStatus.FAILED, error=reason) is None:
            return
        await self._event(run.id, "task.failed", {"task": task.id, "reason": reason})
        await self._finish(
            run.id,
            RunStatus.FAILED,
            error=f"sub-task {task.id!r} failed after {task.attempts} attempts: {reason}",
        )

    async def _charge(self, run: RunRecord, result: Mapping[str, Any]) -> None:
        """Stop the run when its token budget is spent across all sub-tasks."""
        budget = run.options.get("budget_tokens")
        if not budget:
            return
        spent = 0
        for t in await self.store.get_tasks(run.id):
            usage = (t.result or {}).get("usage") or {}
            spent += int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        if spent > budget:
            await self._finish(
                run.id, RunStatus.FAILED, error=f"token budget exhausted: {spent} of {budget}"
            )

    # ------------------------------------------------------------- finishing

    async def _complete(self, run: RunRecord, tasks: list[TaskRecord]) -> None:
        depended = {d for t in tasks for d in t.depends_on}
        finals = [t for t in tasks if t.id not in depended]
        files: list[str] = []
        for t in tasks:
            for call in (t.result or {}).get("tool_calls", []):
                path = (call.get("arguments") or {}).get("path")
                if path and not call.get("is_error") and "write" in str(call.get("name", "")):
                    files.append(str(path))
        result = {
            "summary": "\n\n".join(str((t.result or {}).get("text", "")) for t in finals),
            "files": sorted(set(files)),
            "project": project_folder(run.goal, run.id),
            "offline": any((t.result or {}).get("offline") for t in tasks),
        }
        await self._finish(run.id, RunStatus.SUCCEEDED, result=result)

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
            try:
                run = await self.store.update_run(
                    run_id, expected=run.status, status=status, error=error, result=result
                )
                break
            except Conflict:
                continue
        else:
            return await self.store.get_run(run_id)
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
        await self._event(run_id, f"run.{status.value}", {"error": error, "result": result})
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

    async def _event(self, run_id: str, type: str, data: dict[str, Any]) -> None:
        await self.store.append_event(run_id, type, data)
        async with self._changed:
            self._changed.notify_all()
