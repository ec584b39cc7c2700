"""A run with its own plan: the planner is skipped, the plan checked first, restarts adopt it.

The planners here are scripted models with an empty script: a call to one fails
with "script exhausted", so a run that succeeds never asked its planner.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from microhive.agents.worker import Worker
from microhive.bus import Bus, open_bus
from microhive.cli import app as cli_app
from microhive.config import load_config
from microhive.models.scripted import ScriptedModel
from microhive.orchestrator import RunStatus, TaskStatus, WorkflowStore
from microhive.orchestrator.engine import Orchestrator, RunOptions
from microhive.orchestrator.plan import PlanError
from microhive.orchestrator.plan_file import (
    MAX_PLAN_BYTES,
    given_plan,
    parse_plan_text,
    read_plan_file,
)
from microhive.orchestrator.service import create_service
from microhive.service import ServiceContext
from tests.conftest import eventually, free_port
from tests.mcp_gateway.harness import serving

ROLES = {"researcher": "finds material", "writer": "writes the brief"}

PLAN: dict[str, Any] = {
    "goal": "a brief about bees in cities",
    "tasks": [
        {"id": "bees", "role": "researcher", "instruction": "research urban bees"},
        {"id": "parks", "role": "researcher", "instruction": "research city parks"},
        {
            "id": "write",
            "role": "writer",
            "instruction": "write the brief",
            "depends_on": ["bees", "parks"],
        },
    ],
}

PLAN_YAML = """\
goal: a brief about bees in cities
tasks:
  - id: bees
    role: researcher
    instruction: research urban bees
  - id: write
    role: writer
    instruction: write the brief
    depends_on: [bees]
"""


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\ntasks: *a{levels}\n"


# ---------------------------------------------------------------- the engine


async def _workers(bus: Bus) -> list[Worker]:
    workers = []
    for role, text in (("researcher", "found it"), ("writer", "the brief")):
        model = ScriptedModel([text], cycle=True)

        def model_for(_: str | None, m: ScriptedModel = model) -> ScriptedModel:
            return m

        worker = Worker(bus=bus, role=role, model_for=model_for)
        await worker.start()
        workers.append(worker)
    return workers


async def test_a_given_plan_is_stored_before_submit_returns_and_run_without_the_planner(
    bus: Bus, store: WorkflowStore
) -> None:
    planner = ScriptedModel([])
    orch = Orchestrator(store=store, bus=bus, planner=planner, roles=ROLES)
    await orch.start()
    workers = await _workers(bus)
    try:
        run = await orch.submit("bees", RunOptions(timeout=30), plan=PLAN)
        # Durable before the answer: running, its plan and sub-tasks stored.
        assert run.status is RunStatus.RUNNING
        assert run.plan is not None and run.plan["source"] == "given"
        assert [t.id for t in await store.get_tasks(run.id)] == ["bees", "parks", "write"]
        done = await orch.wait(run.id, within=20)
        assert done.status is RunStatus.SUCCEEDED, done.error
        assert planner.requests == []
        events = await store.events(run.id)
        assert [e.type for e in events][:2] == ["run.created", "plan.made"]
        assert events[1].data["source"] == "given"
        assert [t["id"] for t in events[1].data["tasks"]] == ["bees", "parks", "write"]
        assert not [e for e in events if e.type.startswith("plan.") and e.type != "plan.made"]
        tasks = {t.id: t for t in await store.get_tasks(run.id)}
        assert all(t.status is TaskStatus.SUCCEEDED for t in tasks.values())
        assert done.result is not None and done.result["summary"] == "the brief"
    finally:
        for w in workers:
            await w.aclose()
        await orch.aclose()


@pytest.mark.parametrize("crash", ["after_submit", "before_the_sub_tasks_were_stored"])
async def test_a_given_plan_survives_an_orchestrator_restart_without_the_planner(
    bus: Bus, store: WorkflowStore, crash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ScriptedModel([])
    orch = Orchestrator(store=store, bus=bus, planner=first, roles=ROLES)
    await orch.start()
    if crash == "after_submit":
        run = await orch.submit("bees", plan=PLAN)
    else:
        # The process dies between storing the run and storing its sub-tasks.
        async def killed(run_id: str, tasks: object) -> None:
            raise RuntimeError("killed")

        monkeypatch.setattr(store, "put_tasks", killed)
        with pytest.raises(RuntimeError, match="killed"):
            await orch.submit("bees", plan=PLAN)
        monkeypatch.undo()
        [run] = await store.list_runs()
        assert run.status is RunStatus.PENDING and await store.get_tasks(run.id) == []
    await orch.aclose()

    second = ScriptedModel([])
    again = Orchestrator(store=store, bus=bus, planner=second, roles=ROLES)
    await again.start()
    workers = await _workers(bus)
    try:
        done = await again.wait(run.id, within=20)
        assert done.status is RunStatus.SUCCEEDED, done.error
        assert first.requests == [] and second.requests == []
        types = [e.type for e in await store.events(run.id)]
        assert types.count("plan.made") == 1
        assert "plan.refused" not in types
        made = next(e for e in await store.events(run.id) if e.type == "plan.made")
        assert made.data["source"] == "given"
    finally:
        for w in workers:
            await w.aclose()
        await again.aclose()


async def test_an_invalid_plan_is_refused_before_anything_is_stored(
    bus: Bus, store: WorkflowStore
) -> None:
    orch = Orchestrator(store=store, bus=bus, planner=ScriptedModel([]), roles=ROLES)
    await orch.start()
    try:
        with pytest.raises(PlanError, match="unknown role 'poet'"):
            await orch.submit("x", plan=[{"id": "a", "role": "poet", "instruction": "rhyme"}])
        assert await store.list_runs() == []
    finally:
        await orch.aclose()


# ---------------------------------------------------- the service (REST, CLI)

MESH = """\
bus: {{url: "embedded://{root}/bus"}}
stores: {{workflow: "sqlite:///{root}/wf.db"}}
models:
  default: {{provider: offline}}
  plan: {{provider: scripted, model: "{root}/planner.json"}}
roles:
  planner: {{model: plan}}
  researcher: {{description: finds material}}
  writer: {{description: writes the brief}}
services:
  orchestrator: {{kind: orchestrator, port: {port}}}
"""


@dataclass
class Live:
    url: str
    root: Path
    mesh_file: Path


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    """The orchestrator service on a real socket, its planner's script empty, and
    one worker per role on the same embedded bus."""
    port = free_port()
    (tmp_path / "planner.json").write_text(json.dumps({"replies": []}))
    mesh_file = tmp_path / "microhive.yaml"
    mesh_file.write_text(MESH.format(root=tmp_path, port=port))
    mesh = load_config(mesh_file)
    ctx = ServiceContext(
        name="orchestrator",
        spec=mesh.services["orchestrator"],
        mesh=mesh,
        port=port,
        state_dir=tmp_path / ".microhive",
    )
    service = create_service(ctx)
    async with serving(service.asgi(), port=port) as base, open_bus(mesh.bus.url) as bus:
        workers = await _workers(bus)
        try:
            yield Live(base, tmp_path, mesh_file)
        finally:
            for w in workers:
                await w.aclose()


async def _finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = await eventually(done, within=30, what=f"run {run_id} to end")
    return result


async def _events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    events = []
    async with client.stream("GET", f"/runs/{run_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


async def test_rest_runs_a_given_plan_to_success_and_the_goal_defaults_to_its_own(
    live: Live,
) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        response = await client.post("/runs", json={"plan": PLAN, "options": {"timeout": 60}})
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["goal"] == PLAN["goal"]
        assert accepted["status"] == "running"
        assert accepted["plan"]["source"] == "given"
        assert [t["id"] for t in accepted["tasks"]] == ["bees", "parks", "write"]
        run = await _finished(client, accepted["id"])
        assert run["status"] == "succeeded", run["error"]
        events = await _events(client, accepted["id"])
        made = [e for e in events if e["type"] == "plan.made"]
        assert len(made) == 1 and made[0]["source"] == "given"
        assert events[-1]["type"] == "run.succeeded"

        # The planner's script is empty: a goal without a plan would have needed it.
        planned = (await client.post("/runs", json={"goal": "a brief about bees"})).json()
        failed = await _finished(client, planned["id"])
        assert failed["status"] == "failed" and "script exhausted" in failed["error"]


def _task(**changes: Any) -> dict[str, Any]:
    return {"id": "a", "role": "researcher", "instruction": "dig", **changes}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"goal": "x", "plan": {"tasks": [_task(role="poet")]}}, "unknown role 'poet'"),
        (
            {
                "goal": "x",
                "plan": [_task(depends_on=["b"]), _task(id="b", depends_on=["a"])],
            },
            "dependency cycle: a -> b -> a",
        ),
        ({"goal": "x", "plan": {"tasks": [_task(colour="red")]}}, "tasks.0.colour"),
        ({"goal": "x", "plan": {"tasks": [_task()], "colour": 1}}, "unknown keys: colour"),
        ({"goal": "x", "plan": {"tasks": []}}, "plan has no tasks"),
        ({"goal": "x", "plan": "research, then write"}, "'plan' must be an object"),
        ({"plan": {"tasks": [_task()]}}, "'goal' string (or a plan with one)"),
    ],
)
async def test_rest_refuses_an_invalid_plan_with_the_reason_and_stores_nothing(
    live: Live, body: dict[str, Any], reason: str
) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        response = await client.post("/runs", json=body)
        assert response.status_code == 400, response.text
        assert reason in response.json()["message"]
        assert (await client.get("/runs")).json() == []


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args), catch_exceptions=False)


async def test_cli_runs_a_plan_file_against_the_orchestrator(live: Live) -> None:
    plan_file = live.root / "plan.yaml"
    plan_file.write_text(PLAN_YAML)
    mesh = str(live.mesh_file)
    result = await asyncio.to_thread(_cli, "run", "--plan", str(plan_file), "-f", mesh, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    run = lines[-1]
    assert run["status"] == "succeeded" and run["goal"] == "a brief about bees in cities"
    made = next(e for e in lines if e.get("type") == "plan.made")
    assert made["source"] == "given"
    assert [t["id"] for t in run["tasks"]] == ["bees", "write"]

    # A plan the orchestrator refuses: one line with its reason, exit 2.
    plan_file.write_text(PLAN_YAML.replace("role: writer", "role: poet"))
    refused = await asyncio.to_thread(_cli, "run", "goal", "--plan", str(plan_file), "-f", mesh)
    assert refused.exit_code == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: the orchestrator refused the plan: ")
    assert "task 'write' names unknown role 'poet'" in line


def test_cli_plan_file_errors_are_one_line(tmp_path: Path) -> None:
    cases = {
        "broken.yaml": (
            "tasks:\n  - id: a\n    role: researcher\n   instruction: x\n",
            "broken.yaml:4: not valid YAML",
        ),
        "bomb.yaml": (billion_laughs(), "expands to more than 100000 YAML nodes"),
        "big.yaml": ("#" * (MAX_PLAN_BYTES + 1), f"over {MAX_PLAN_BYTES} bytes"),
        "broken.json": ('{"tasks": [\n  {"id": "a",}\n]}', "broken.json:2: not valid JSON"),
        "nogoal.yaml": (
            "tasks: [{id: a, role: researcher, instruction: x}]\n",
            "give a goal (microhive run GOAL)",
        ),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = _cli("run", "--plan", str(path), "-f", str(tmp_path / "absent.yaml"))
        assert result.exit_code == 2, (name, result.output)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and expected in line, (name, line)
    missing = _cli("run", "--plan", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "cannot read the plan" in missing.stderr


def test_plan_files_are_read_safely() -> None:
    # A "billion laughs" document is a few hundred bytes that would expand to 9**10
    # strings: refused from its composed graph, without expanding it.
    with pytest.raises(PlanError, match="expands to more than"):
        parse_plan_text(billion_laughs(), source="bomb.yaml")
    with pytest.raises(PlanError, match="alias refers to a node that contains it"):
        parse_plan_text("tasks: &t [*t]\n")
    with pytest.raises(PlanError, match=":3: duplicate key 'role'"):
        parse_plan_text("tasks:\n  - {id: a, role: x,\n     role: y, instruction: z}\n")
    with pytest.raises(PlanError, match="nests too deeply"):
        parse_plan_text("[" * 5000 + "]" * 5000)
    with pytest.raises(PlanError, match="could not determine a constructor"):
        parse_plan_text("tasks: !!python/object/apply:os.system [echo hi]\n")
    # Aliases that stay small are fine, and a bare list is the tasks.
    shared = parse_plan_text("x: &i {topic: bees}\ntasks:\n  - {id: a, inputs: *i}\n")
    assert shared["tasks"][0]["inputs"] == {"topic": "bees"}
    assert parse_plan_text("- {id: a}\n") == {"tasks": [{"id": "a"}]}


def test_a_plan_file_reads_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text(PLAN_YAML)
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    assert read_plan_file(tmp_path / "plan.yaml")["goal"] == "a brief about bees in cities"
    assert read_plan_file(tmp_path / "plan.json") == PLAN


def test_the_plan_in_the_docs_is_valid() -> None:
    docs = Path(__file__).parents[2] / "docs" / "orchestrator.md"
    section = docs.read_text(encoding="utf-8").split("## Running your own plan", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = parse_plan_text(example, source="docs/orchestrator.md")
    plan = given_plan(data, roles=["researcher", "fact-checker", "writer"])
    assert plan.topological_order() == ["research", "fact-check", "write"]
