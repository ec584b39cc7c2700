"""A run succeeds only when its work is done: declared outputs are checked by code.

Also here: configuration errors are not retried, the model's streamed text and
its retries reach the run's events, and the planner is asked for a plan with
the mesh's roles as structured output.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from microhive.agents.outputs import WorkspaceOutputs, output_paths
from microhive.agents.toolbox import LocalToolbox
from microhive.agents.worker import Worker
from microhive.bus import Bus
from microhive.errors import UpstreamError, UsageError
from microhive.models.base import ModelProvider
from microhive.models.scripted import Reply, ScriptedModel
from microhive.models.types import ToolCall, ToolSpec
from microhive.orchestrator import RunStatus, TaskStatus, WorkflowStore
from microhive.orchestrator.engine import Orchestrator, RunOptions
from microhive.service import Service
from microhive.workspace.service import build_service
from tests.workspace.wshelp import Server, settings

ROLES = {"researcher": "finds material", "writer": "writes the brief"}
WRITE = ToolSpec(
    "workspace.write",
    "Write a file.",
    {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"],
    },
)


def _plan(save_to: str = "notes.md") -> str:
    return json.dumps(
        {
            "tasks": [
                {
                    "id": "research",
                    "role": "researcher",
                    "instruction": "research bees and save your notes",
                    "inputs": {"topic": "bees", "query": "", "read": [], "save_to": save_to},
                    "depends_on": [],
                }
            ]
        }
    )


class Files:
    """A workspace stand-in: what the write tool stored, and a checker reading it."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.checked: list[list[str]] = []

    def toolbox(self) -> LocalToolbox:
        def write(path: str, content: str, idempotency_key: str = "") -> dict[str, Any]:
            self.files[path] = content
            return {"path": path}

        return LocalToolbox({"workspace.write": (WRITE, write)})

    async def missing(self, paths: Sequence[str]) -> list[str]:
        self.checked.append(list(paths))
        return [p for p in paths if p not in self.files]


Start = Callable[..., Awaitable[Orchestrator]]


@pytest.fixture
async def mesh(bus: Bus, store: WorkflowStore) -> AsyncIterator[Start]:
    """Start an orchestrator and one researcher worker; both closed at the end."""
    started: list[Any] = []

    async def start(
        planner: ModelProvider,
        worker_model: ModelProvider,
        *,
        files: Files | None = None,
        check: Any = "files",
    ) -> Orchestrator:
        orch = Orchestrator(store=store, bus=bus, planner=planner, roles=ROLES, max_attempts=2)
        await orch.start()
        box = files.toolbox() if files is not None else None

        async def tools(_: object) -> LocalToolbox | None:
            return box

        worker = Worker(
            bus=bus,
            role="researcher",
            model_for=lambda _: worker_model,
            toolbox_for=tools,
            check_outputs=files if check == "files" else check,
        )
        await worker.start()
        started.extend([worker, orch])
        return orch

    yield start
    for thing in started:
        await thing.aclose()


def _save(path: str) -> Reply:
    return Reply(tool_calls=(ToolCall("", "workspace.write", {"path": path, "content": "x"}),))


async def test_an_output_saved_elsewhere_does_not_count(mesh: Start, store: WorkflowStore) -> None:
    files = Files()
    # The agent saves "notes.md" at the workspace's root, not in the run's project.
    model = ScriptedModel([_save("notes.md"), "saved"], cycle=True)
    orch = await mesh(ScriptedModel([_plan()]), model, files=files)
    run = await orch.submit("bees", RunOptions(timeout=30))
    done = await orch.wait(run.id, within=20)
    project = (await orch.get(run.id))["project"]
    assert done.status is RunStatus.FAILED
    assert files.files == {"notes.md": "x"}
    assert files.checked[0] == [f"{project}/notes.md"]
    assert f"declared output not written: {project}/notes.md" in (done.error or "")


async def test_the_agents_word_is_not_enough(mesh: Start, store: WorkflowStore) -> None:
    files = Files()
    # The model answers "done" twice (two attempts) without ever saving anything.
    model = ScriptedModel(["All done!"], cycle=True)
    orch = await mesh(ScriptedModel([_plan()]), model, files=files)
    run = await orch.submit("bees", RunOptions(timeout=30))
    done = await orch.wait(run.id, within=20)
    assert done.status is RunStatus.FAILED
    assert "declared output not written" in (done.error or "")
    assert "notes.md" in (done.error or "")
    [task] = await store.get_tasks(run.id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 2)  # retried once, then failed
    types = [e.type for e in await store.events(run.id)]
    assert "task.retry" in types and "run.succeeded" not in types


class _Writer(ModelProvider):
    """Saves to the path the task's prompt names as its required output, then answers."""

    provider = "scripted"
    offline = True

    async def _chat(self, request: Any) -> Any:
        from microhive.models.types import ChatResult, ToolResultMessage

        if any(isinstance(m, ToolResultMessage) for m in request.messages):
            return ChatResult("saved", provider="scripted", offline=True)
        text = request.messages[-1].content
        path = text.split("workspace write tool to:", 1)[1].split("\n- ", 1)[1].split("\n", 1)[0]
        call = ToolCall("c1", "workspace.write", {"path": path.strip(), "content": "# Bees"})
        return ChatResult("", (call,), "tool_calls", provider="scripted", offline=True)


async def test_a_written_output_passes_the_check(mesh: Start, store: WorkflowStore) -> None:
    files = Files()
    orch = await mesh(ScriptedModel([_plan()]), _Writer("w"), files=files)
    run = await orch.submit("bees", RunOptions(timeout=30))
    done = await orch.wait(run.id, within=20)
    assert done.status is RunStatus.SUCCEEDED, done.error
    project = (await orch.get(run.id))["project"]
    assert files.files == {f"{project}/notes.md": "# Bees"}
    assert done.result is not None and f"{project}/notes.md" in done.result["files"]


async def test_a_worker_without_a_workspace_cannot_vouch_for_outputs(mesh: Start) -> None:
    files = Files()
    orch = await mesh(ScriptedModel([_plan()]), _Writer("w"), files=files, check=None)
    run = await orch.submit("bees", RunOptions(timeout=30))
    done = await orch.wait(run.id, within=20)
    assert done.status is RunStatus.FAILED
    assert "no workspace to check them" in (done.error or "")
    assert "(not retried)" in (done.error or "")


async def test_a_configuration_error_is_not_retried(mesh: Start, store: WorkflowStore) -> None:
    refused = UsageError("the openai model 'x' needs an API key in OPENAI_API_KEY")
    model = ScriptedModel([refused], cycle=True)
    orch = await mesh(ScriptedModel([_plan("")]), model, files=Files())
    run = await orch.submit("bees", RunOptions(timeout=30))
    done = await orch.wait(run.id, within=20)
    assert done.status is RunStatus.FAILED
    assert "needs an API key" in (done.error or "") and "(not retried)" in (done.error or "")
    [task] = await store.get_tasks(run.id)
    assert task.attempts == 1 and model.calls == 1


async def test_a_passing_failure_is_still_retried(mesh: Start, store: WorkflowStore) -> None:
    model = ScriptedModel([UpstreamError("server busy"), "fine now"])
    orch = await mesh(ScriptedModel([_plan("")]), model, files=Files())
    run = await orch.submit("bees", RunOptions(timeout=30))
    done = await orch.wait(run.id, within=20)
    assert done.status is RunStatus.SUCCEEDED, done.error
    [task] = await store.get_tasks(run.id)
    assert task.attempts == 2


async def test_streamed_text_and_retries_reach_the_run_events(
    mesh: Start, store: WorkflowStore
) -> None:
    class Flaky(ScriptedModel):
        """Fails once with a passing error, then answers (streamed by the script)."""

    model = Flaky([UpstreamError("warming up"), "Bees pollinate most city gardens. " * 4])
    model.retries = 1
    import microhive.models.base as base

    orig = base._BACKOFF_BASE
    base._BACKOFF_BASE = 0.01  # keep the test fast; the real backoff starts at 1 s
    try:
        orch = await mesh(ScriptedModel([_plan("")]), model, files=Files())
        run = await orch.submit("bees", RunOptions(timeout=30))
        done = await orch.wait(run.id, within=20)
    finally:
        base._BACKOFF_BASE = orig
    assert done.status is RunStatus.SUCCEEDED, done.error
    events = await store.events(run.id)
    streamed = "".join(e.data["text"] for e in events if e.type == "task.output")
    assert streamed == "Bees pollinate most city gardens. " * 4
    [retry] = [e for e in events if e.type == "task.model_retry"]
    assert retry.data["task"] == "research" and "warming up" in retry.data["reason"]


async def test_the_planner_is_asked_for_the_plan_schema_with_the_roles(mesh: Start) -> None:
    planner = ScriptedModel([_plan("")])
    orch = await mesh(planner, ScriptedModel(["ok"]), files=Files())
    run = await orch.submit("bees", RunOptions(timeout=30))
    assert (await orch.wait(run.id, within=20)).status is RunStatus.SUCCEEDED
    schema = planner.requests[0].response_schema
    assert schema is not None and schema.name == "plan"
    # One branch per plan size; in each, every step's role is one of the mesh's.
    branches = schema.schema["anyOf"]
    assert 1 < len(branches) <= 16
    for size, branch in enumerate(branches, start=1):
        tasks = branch["properties"]["tasks"]
        assert tasks["minItems"] == tasks["maxItems"] == size
        for step, task in enumerate(tasks["prefixItems"], start=1):
            assert task["properties"]["role"]["enum"] == ["researcher", "writer"]
            # step n may only name steps 1..n-1: no cycle can be written
            depends = task["properties"]["depends_on"]
            assert depends["maxItems"] <= step - 1
            if step > 1:
                assert depends["items"]["maximum"] == step - 1
    assert schema.plain()["type"] == "object"


def test_output_paths_live_in_the_project_folder() -> None:
    assert output_paths(["a.md", "projects/p/b.md", "/c.md"], "projects/p") == [
        "projects/p/a.md",
        "projects/p/b.md",
        "projects/p/c.md",
    ]


async def test_the_workspace_checker_asks_the_real_workspace(tmp_path: Path) -> None:
    service = build_service(Service(name="workspace"), settings(tmp_path / "ws"))
    server = await Server(service.asgi()).start()
    check = WorkspaceOutputs(server.url)
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            put = await http.put("/v1/ws/default/files/projects/p/notes.md", content=b"# notes")
            assert put.status_code in (200, 201), put.text
        assert await check.missing(["projects/p/notes.md", "projects/p/report.md"]) == [
            "projects/p/report.md"
        ]
    finally:
        await check.aclose()
        await server.stop()
    down = WorkspaceOutputs("http://127.0.0.1:9", attempts=2)
    try:
        with pytest.raises(Exception, match="cannot check the outputs"):
            await down.missing(["x.md"])
    finally:
        await down.aclose()


async def test_a_task_with_outputs_is_offered_a_write_tool_whatever_retrieval_picks(
    bus: Bus, store: WorkflowStore
) -> None:
    files = Files()
    write = files.toolbox()._tools["workspace.write"]
    box = LocalToolbox()
    for i in range(6):  # tools that crowd the write tool out of the top k

        def noop(x: str = "") -> str:
            return "nothing"

        box.add(noop, name=f"calc.noop{i}")
    box._tools["workspace.write"] = write  # last: retrieval (here, the first k) misses it
    model = _Writer("w")
    requests: list[Any] = []
    real_chat = model._chat

    async def spy(request: Any) -> Any:
        requests.append(request)
        return await real_chat(request)

    model._chat = spy  # type: ignore[method-assign]
    orch = Orchestrator(
        store=store, bus=bus, planner=ScriptedModel([_plan()]), roles=ROLES, max_attempts=1
    )
    await orch.start()

    async def tools(_: object) -> LocalToolbox:
        return box

    worker = Worker(
        bus=bus,
        role="researcher",
        model_for=lambda _: model,
        toolbox_for=tools,
        top_k=2,
        check_outputs=files,
    )
    await worker.start()
    try:
        run = await orch.submit("bees", RunOptions(timeout=30))
        done = await orch.wait(run.id, within=20)
    finally:
        await worker.aclose()
        await orch.aclose()
    offered = [t.name for t in requests[0].tools]
    assert len(offered) == 3 and "workspace.write" in offered  # top 2, plus the writer
    assert done.status is RunStatus.SUCCEEDED, done.error


async def test_prefetch_puts_what_a_task_reads_and_finds_in_its_prompt(
    bus: Bus, store: WorkflowStore, tmp_path: Path
) -> None:
    ws = build_service(Service(name="workspace"), settings(tmp_path / "ws"))
    server = await Server(ws.asgi()).start()
    access = WorkspaceOutputs(server.url)
    plan = {
        "tasks": [
            {"id": "find", "role": "researcher", "instruction": "find", "outputs": ["f.json"]},
            {
                "id": "write",
                "role": "writer",
                "instruction": "write the brief",
                "inputs": {"read": ["library/roofs.md"], "query": "green roofs bees"},
                "depends_on": ["find"],
            },
        ]
    }
    researcher = _Writer("r")
    writer = ScriptedModel(["the brief"])
    orch = Orchestrator(
        store=store, bus=bus, planner=ScriptedModel([]), roles=ROLES, max_attempts=1
    )
    await orch.start()
    workers = [
        Worker(
            bus=bus,
            role="researcher",
            model_for=lambda _: researcher,
            toolbox_for=_workspace_box(server.url),
            check_outputs=access,
        ),
        Worker(
            bus=bus,
            role="writer",
            model_for=lambda _: writer,
            check_outputs=access,
            prefetch=access,
        ),
    ]
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.put(
                "/v1/ws/default/files/library/roofs.md", content=b"# Roofs\nGreen roofs."
            )
            await http.put(
                "/v1/ws/default/files/library/verges.md",
                content=b"# Verges\nUncut verges feed bees; green roofs hold few bee species.",
            )
        for w in workers:
            await w.start()
        run = await orch.submit("bees", RunOptions(timeout=30), plan=plan)
        done = await orch.wait(run.id, within=30)
        assert done.status is RunStatus.SUCCEEDED, done.error
        material, task = writer.requests[0].messages[1:]
        assert task.content.startswith("write the brief")  # the task comes last
        prompt = material.content
        project = (await orch.get(run.id))["project"]
        # the dependency's declared output, the file the task reads, and a search hit
        assert f'<document source="{project}/f.json">' in prompt
        assert '<document source="library/roofs.md">\n# Roofs\nGreen roofs.' in prompt
        assert '<document source="library/verges.md">' in prompt
    finally:
        for w in workers:
            await w.aclose()
        await orch.aclose()
        await access.aclose()
        await server.stop()


def _workspace_box(base: str) -> Callable[[object], Awaitable[LocalToolbox]]:
    """A write tool that really writes to the workspace at ``base`` (over REST)."""

    async def write(path: str, content: str, idempotency_key: str = "") -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            response = await http.put(f"{base}/v1/ws/default/files/{path}", content=content)
        response.raise_for_status()
        return {"path": path}

    box = LocalToolbox({"workspace.write": (WRITE, write)})

    async def tools(_: object) -> LocalToolbox:
        return box

    return tools


class _Forgetful(ModelProvider):
    """Answers without saving; told the file is missing, saves it, then answers."""

    provider = "scripted"
    offline = True

    async def _chat(self, request: Any) -> Any:
        from microhive.models.types import ChatResult, ToolResultMessage, UserMessage

        last = request.messages[-1]
        if isinstance(last, ToolResultMessage):
            return ChatResult("saved now", provider="scripted", offline=True)
        if isinstance(last, UserMessage) and last.content.startswith("Not done yet: "):
            path = last.content.removeprefix("Not done yet: ").split(" ", 1)[0]
            call = ToolCall("c1", "workspace.write", {"path": path, "content": "# Bees"})
            return ChatResult("", (call,), "tool_calls", provider="scripted", offline=True)
        return ChatResult("All done!", provider="scripted", offline=True)


async def test_an_answer_with_the_file_missing_is_told_so_within_the_attempt(
    mesh: Start, store: WorkflowStore
) -> None:
    files = Files()
    orch = await mesh(ScriptedModel([_plan()]), _Forgetful("f"), files=files)
    run = await orch.submit("bees", RunOptions(timeout=30))
    done = await orch.wait(run.id, within=20)
    assert done.status is RunStatus.SUCCEEDED, done.error
    [task] = await store.get_tasks(run.id)
    assert task.attempts == 1  # no second attempt was needed
    project = (await orch.get(run.id))["project"]
    assert files.files == {f"{project}/notes.md": "# Bees"}
