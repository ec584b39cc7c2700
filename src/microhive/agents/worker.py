"""A worker: one role's agent, taking sub-tasks from its queue group on the bus.

Workers keep no state. A sub-task arrives as a :class:`TaskMessage` on
``tasks.<role>``; the worker says it started, runs the agent loop (model and the
role's tools), reports each tool call, and publishes the result on
``runs.<run>.result``. Only then is the message acknowledged, so a worker killed
mid-task loses nothing: the bus redelivers the sub-task to another replica.

A sub-task's declared outputs (files it must produce) are checked by code once
the agent answers (:mod:`microhive.agents.outputs`): a missing one fails the
attempt, whatever the model said. A failure that trying again cannot fix (a
configuration error, such as a missing API key) is reported as not retryable.
While the agent works, the model's streamed text goes out as ``output`` progress
(at most about once a second) and each model-call retry as ``retry``.

What makes the redo safe is that everything a worker causes is keyed on the
sub-task: its events carry message ids built from run, task and attempt (the bus
stores each once), and tool calls that accept an ``idempotency_key`` get one
derived from the sub-task and the call's position, so a workspace write repeated
by the second replica is applied once.

Each sub-task is one ``invoke_agent {role}`` span (with ``microhive.run_id``, the
sub-task id and attempt), a child of the orchestrator's dispatch in the run's
trace; the loop's model and tool calls are its children, and the events the
worker publishes carry it as their parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.lowlevel
from opentelemetry import context as otel_context
from opentelemetry.trace import Status, StatusCode

from microhive.agents.loop import (
    AgentResult,
    StopReason,
    Toolbox,
    ToolOutcome,
    ToolRecord,
    run_agent,
    with_span_trace,
)
from microhive.agents.outputs import OutputCheck, Prefetch, output_paths
from microhive.bus import Bus, Delivery, Subscription
from microhive.context import CallContext
from microhive.errors import MicrohiveError, UsageError
from microhive.models.base import ModelProvider, join_trace
from microhive.models.prompts import task_messages
from microhive.models.types import ChatHooks, ToolSpec
from microhive.orchestrator.messages import (
    TaskEvent,
    TaskMessage,
    parse_message,
    result_msg_id,
    run_subject,
    task_subject,
    worker_group,
)
from microhive.tracing import CallMetrics, TracedSpan, agent_span

__all__ = ["EVENT_OUTPUT_MISSING", "KeyedToolbox", "Worker"]

#: The span event of a sub-task whose declared outputs were not produced.
EVENT_OUTPUT_MISSING = "output_missing"
#: Streamed model text is sent on at most this often (seconds) per sub-task.
OUTPUT_INTERVAL = 1.0

log = logging.getLogger("microhive.worker")

ModelFor = Callable[[str | None], ModelProvider]
ToolboxFor = Callable[[TaskMessage], Awaitable[Toolbox | None]]


class KeyedToolbox:
    """Gives calls of tools that accept an ``idempotency_key`` a deterministic one.

    The key is the worker's business, not the model's: it is left out of the
    tools' schemas the model sees, and whatever a model writes there is replaced
    (a small model fills every field it is shown, with ``null`` as often as not).
    """

    def __init__(self, inner: Toolbox, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix
        self._keyed: set[str] = set()
        self._tools: list[ToolSpec] | None = None
        self._count = 0

    async def list_tools(self) -> list[ToolSpec]:
        # Listed once per sub-task (this object lives for one), however often asked.
        if self._tools is None:
            tools = await self._inner.list_tools()
            self._keyed = {t.name for t in tools if _KEY in (t.parameters.get("properties") or {})}
            self._tools = [_without_key(t) if t.name in self._keyed else t for t in tools]
        return self._tools

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, context: CallContext
    ) -> ToolOutcome:
        self._count += 1
        if name in self._keyed:
            arguments = {**arguments, _KEY: f"{self._prefix}:{self._count}"}
        return await self._inner.call_tool(name, arguments, context=context)


_KEY = "idempotency_key"


def _without_key(tool: ToolSpec) -> ToolSpec:
    schema = dict(tool.parameters)
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k != _KEY}
    if isinstance(schema.get("required"), list):
        schema["required"] = [r for r in schema["required"] if r != _KEY]
    return ToolSpec(tool.name, tool.description, schema)


class Worker:
    """Serves one role: ``await worker.start()``, then ``await worker.aclose()``."""

    def __init__(
        self,
        *,
        bus: Bus,
        role: str,
        model_for: ModelFor,
        toolbox_for: ToolboxFor | None = None,
        max_steps: int = 8,
        top_k: int | None = None,
        concurrency: int = 4,
        ack_wait: float = 30.0,
        role_prompt: str = "",
        metrics: CallMetrics | None = None,
        check_outputs: OutputCheck | None = None,
        prefetch: Prefetch | None = None,
    ) -> None:
        self.bus = bus
        self.role = role
        self.model_for = model_for
        self.toolbox_for = toolbox_for
        self.max_steps = max_steps
        self.top_k = top_k
        self.concurrency = concurrency
        self.ack_wait = ack_wait
        self.role_prompt = role_prompt
        self.metrics = metrics
        self.check_outputs = check_outputs
        self.prefetch = prefetch
        self.name = f"{role}@{socket.gethostname()}:{os.getpid()}"
        self.handled = 0
        #: Sub-tasks being worked on right now (a service exposes it on /metrics).
        self.active = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        # anyio loads its event-loop backend on first use, and every model call uses
        # it: load it now, so the first sub-task does not pay for the import.
        await anyio.lowlevel.checkpoint()
        self._sub = await self.bus.subscribe(
            task_subject(self.role),
            self.handle,
            queue=worker_group(self.role),
            start="beginning",
            concurrency=self.concurrency,
            ack_wait=self.ack_wait,
        )

    async def aclose(self) -> None:
        if self._sub is not None:
            await self._sub.aclose()
            self._sub = None

    async def handle(self, delivery: Delivery) -> None:
        """Run one sub-task. Malformed messages raise InvalidInput (dead-lettered)."""
        task = parse_message(TaskMessage, delivery.json())
        self.active += 1
        token = join_trace(delivery.context)  # a no-op when the bus activated it already
        try:
            with agent_span(
                self.role, agent_id=self.name, run_id=task.run_id, ctx=delivery.context
            ) as span:
                span.set("microhive.task_id", task.task_id)
                span.set("microhive.task.attempt", task.attempt)
                # The bus activated the delivery's context; with the span now current,
                # what the worker publishes has it as parent. Calls given the context
                # explicitly get it through with_span_trace.
                ctx = with_span_trace(delivery.context, span)
                await self._handle(task, ctx, delivery, span)
        finally:
            self.active -= 1
            if token is not None:
                otel_context.detach(token)

    async def _handle(
        self, task: TaskMessage, ctx: CallContext, delivery: Delivery, span: TracedSpan
    ) -> None:
        # Saying "started" need not delay the work: it is stored while the agent runs,
        # and awaited before the result so the orchestrator hears them in order.
        started = asyncio.create_task(self._report(task, "started"))
        heartbeat = asyncio.create_task(self._keep_alive(delivery))
        try:
            result = await self._run(task, ctx, span)
        except MicrohiveError as exc:
            span.fail(exc)
            await started
            # A developer's or operator's mistake fails the same way every time.
            retryable = not isinstance(exc, UsageError)
            await self._report(task, "result", ok=False, error=exc.message, retryable=retryable)
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if not started.done():
                await asyncio.wait([started])
        await started
        span.usage(input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens)
        ok = result.stop is StopReason.FINAL_ANSWER
        error = None if ok else f"{result.stop.value}: {result.detail}"
        retryable = True
        data = result.to_dict()
        if ok and task.outputs:
            error, retryable = await self._verify(task, data, span)
            ok = error is None
        await self._report(task, "result", ok=ok, result=data, error=error, retryable=retryable)
        self.handled += 1

    async def _prefetched(self, task: TaskMessage, span: TracedSpan) -> dict[str, str]:
        """The documents the prefetch finds for ``task`` (none when it fails)."""
        assert self.prefetch is not None
        read = task.inputs.get("read") or []
        reads = [read] if isinstance(read, str) else [str(r) for r in read]
        query = next(
            (str(task.inputs[k]) for k in ("query", "topic") if str(task.inputs.get(k) or "")),
            "",
        )
        try:
            docs = await self.prefetch.documents(
                reads=[*reads, *task.dependency_outputs], query=query, project=task.project
            )
        except MicrohiveError as exc:
            log.warning("prefetch for %s/%s failed: %s", task.run_id, task.task_id, exc.message)
            return {}
        span.set("microhive.prefetch.documents", len(docs))
        return docs

    async def _verify(
        self, task: TaskMessage, data: dict[str, Any], span: TracedSpan
    ) -> tuple[str | None, bool]:
        """Check the declared outputs exist; (the reason it failed, retryable) or (None, _)."""
        paths = output_paths(task.outputs, task.project)
        data["outputs"] = paths
        if self.check_outputs is None:
            reason = (
                f"the sub-task declares outputs ({', '.join(paths)}) but this worker has no "
                "workspace to check them (give the worker service a workspace)"
            )
            retryable = False
        else:
            try:
                missing = await self.check_outputs.missing(paths)
            except MicrohiveError as exc:
                reason, retryable = exc.message, True
            else:
                if not missing:
                    return None, True
                reason = (
                    f"declared output{'s' if len(missing) > 1 else ''} not written: "
                    f"{', '.join(missing)} (the agent answered without saving "
                    f"{'them' if len(missing) > 1 else 'it'})"
                )
                data["missing_outputs"] = missing
                retryable = True
        span.span.add_event(EVENT_OUTPUT_MISSING, {"microhive.reason": reason})
        span.set("error.type", EVENT_OUTPUT_MISSING)
        span.span.set_status(Status(StatusCode.ERROR, f"{EVENT_OUTPUT_MISSING}: {reason}"))
        return reason, retryable

    async def _run(self, task: TaskMessage, ctx: CallContext, span: TracedSpan) -> AgentResult:
        model = self.model_for(task.model)
        span.set("gen_ai.provider.name", model.provider)
        span.set("gen_ai.request.model", model.model)
        toolbox = await self.toolbox_for(task) if self.toolbox_for is not None else None
        keyed = (
            KeyedToolbox(toolbox, f"{task.run_id}:{task.task_id}") if toolbox is not None else None
        )
        documents = dict(task.documents)
        if self.prefetch is not None:
            documents.update(await self._prefetched(task, span))
        messages = task_messages(
            task.role,
            task.instruction,
            inputs=task.inputs,
            project=task.project,
            documents=documents,
            role_prompt=self.role_prompt,
            outputs=output_paths(task.outputs, task.project),
        )
        stream = _TextOut(self, task)

        async def on_retry(attempt: int, reason: str, delay: float) -> None:
            detail = {"attempt": attempt, "reason": reason[:500], "delay": delay}
            await self._report(task, "retry", detail=detail)

        async def on_tool(record: ToolRecord) -> None:
            await stream.flush()
            detail: dict[str, Any] = {"tool": record.name, "is_error": record.is_error}
            if record.rejected:
                detail["rejected"] = True
            path = record.arguments.get("path")
            kind = "file" if path and "write" in record.name and not record.is_error else "tool"
            if path:
                detail["path"] = path
            await self._report(task, kind, detail=detail)

        paths = output_paths(task.outputs, task.project)

        async def check_done() -> str | None:
            if not paths or self.check_outputs is None:
                return None
            try:
                missing = await self.check_outputs.missing(paths)
            except MicrohiveError:
                return None  # the check after the loop reports it
            if not missing:
                return None
            return (
                "Not done yet: "
                + ", ".join(missing)
                + " "
                + ("is" if len(missing) == 1 else "are")
                + " not written. Write the result there now with the workspace write tool, "
                "then answer."
            )

        # A task that must save files gets a tool to save them, whatever retrieval picks.
        writers: list[str] = []
        if task.outputs and keyed is not None:
            writers = _write_tools(await keyed.list_tools())
        try:
            return await run_agent(
                model,
                messages,
                toolbox=keyed,
                always_offer=writers,
                context=ctx,
                max_steps=self.max_steps,
                top_k=self.top_k,
                # a toolbox that can rank its tools (the gateway's tool retrieval) picks top k
                select_tools=getattr(toolbox, "select", None),
                task_text=task.instruction,
                on_tool_call=on_tool,
                metrics=self.metrics,
                hooks=ChatHooks(on_text=stream.add, on_retry=on_retry),
                check_done=check_done,
            )
        finally:
            await stream.flush()

    async def _report(
        self,
        task: TaskMessage,
        kind: str,
        *,
        ok: bool = True,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        detail: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> None:
        event = TaskEvent(
            type=kind,
            run_id=task.run_id,
            task_id=task.task_id,
            attempt=task.attempt,
            worker=self.name,
            ok=ok,
            result=result,
            error=error,
            detail=detail or {},
            retryable=retryable,
        )
        subject_kind = {"started": "started", "result": "result"}.get(kind, "progress")
        msg_id = None
        if kind in ("started", "result"):
            msg_id = result_msg_id(task.run_id, task.task_id, task.attempt, kind)
        await self.bus.publish(
            run_subject(task.run_id, subject_kind), event.model_dump(mode="json"), msg_id=msg_id
        )

    async def _keep_alive(self, delivery: Delivery) -> None:
        """Tell the bus the sub-task is still being worked on, well before ack_wait."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            await delivery.in_progress()


_WRITE_TOOL = re.compile(r"(?:^|[._])(?:write|save)(?:_file)?$")


def _write_tools(tools: list[ToolSpec]) -> list[str]:
    """The tools that save a file (the workspace's first), for a task with outputs."""
    found = [t.name for t in tools if _WRITE_TOOL.search(t.name)]
    return sorted(found, key=lambda n: (not n.startswith("workspace"), n))[:1]


class _TextOut:
    """Streamed model text of one sub-task, sent on as ``output`` progress in pieces.

    Pieces are joined and sent at most every :data:`OUTPUT_INTERVAL` seconds (and
    before each tool call's report and at the end), so a slow local model shows
    it is working without one bus message per token.
    """

    def __init__(self, worker: Worker, task: TaskMessage) -> None:
        self._worker = worker
        self._task = task
        self._pieces: list[str] = []
        self._sent = time.monotonic()

    async def add(self, text: str) -> None:
        self._pieces.append(text)
        if time.monotonic() - self._sent >= OUTPUT_INTERVAL:
            await self.flush()

    async def flush(self) -> None:
        self._sent = time.monotonic()
        if not self._pieces:
            return
        text, self._pieces = "".join(self._pieces), []
        await self._worker._report(self._task, "output", detail={"text": text})
