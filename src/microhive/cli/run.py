"""``microhive run GOAL``: give a running mesh a goal and watch it being done.

``microhive run --plan plan.yaml [GOAL]`` gives it the plan too (YAML, or JSON
for ``.json``; the goal defaults to the plan's ``goal``): the planner is
skipped, and a plan the orchestrator refuses is one line saying why (exit 2).

The command posts the goal to the orchestrator, then follows the run's
server-sent events: the plan as it is made, each sub-task as it is dispatched,
started and finished, files as they are written. It ends with the run's status,
its files, a short summary and the trace id (``microhive trace ID`` shows it).
``--json`` prints each event as one JSON line and the final run last.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from microhive.cli._common import (
    EXIT_FAILURE,
    FileOption,
    JsonOption,
    err,
    fail,
    handle_errors,
    load_mesh,
    out,
)
from microhive.config import MeshConfig
from microhive.orchestrator.plan_file import read_plan_file
from microhive.service import STATE_DIR, service_url

__all__ = ["app", "follow_run", "orchestrator_url", "show_run"]

app = typer.Typer()

_STYLE = {
    "pending": "dim",
    "dispatched": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "skipped": "dim",
}


def orchestrator_url(mesh: MeshConfig, name: str | None, mesh_file: Path) -> str:
    """The base URL of the mesh's orchestrator service (its running port, else its fixed one)."""
    with handle_errors():
        return service_url(
            mesh, kind="orchestrator", name=name, state_dir=mesh_file.parent / STATE_DIR
        )


def _events(client: httpx.Client, run_id: str) -> Iterator[dict[str, Any]]:
    with client.stream("GET", f"/runs/{run_id}/events", timeout=None) as response:
        if response.status_code != 200:
            fail(f"cannot follow run {run_id}: HTTP {response.status_code}")
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


def _table(goal: str, tasks: dict[str, dict[str, Any]], notes: list[str]) -> Table:
    table = Table(title=f"[bold]{escape(goal)}[/]", title_justify="left", expand=False)
    table.add_column("sub-task")
    table.add_column("role")
    table.add_column("state")
    table.add_column("after")
    table.add_column("latest", max_width=48, no_wrap=True)
    for task_id, task in tasks.items():
        state = task.get("state", "pending")
        table.add_row(
            task_id,
            task.get("role", ""),
            f"[{_STYLE.get(state, '')}]{state}[/]",
            ", ".join(task.get("depends_on", [])),
            f"[dim]{escape(task.get('latest', ''))}[/]",
        )
    if notes:
        table.caption = "\n".join(escape(note) for note in notes[-4:])
        table.caption_justify = "left"
    return table


def _tail(text: str, width: int = 48) -> str:
    """The last words a model wrote, on one line (what a live table shows)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else "..." + flat[-(width - 3) :]


def follow_run(client: httpx.Client, run_id: str, goal: str, *, as_json: bool) -> dict[str, Any]:
    """Show a run's progress until it ends; return the final run."""
    tasks: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    if as_json:
        for event in _events(client, run_id):
            out.out(json.dumps(event), highlight=False)
    else:
        with Live(_table(goal, tasks, notes), console=err, refresh_per_second=8) as live:
            for event in _events(client, run_id):
                kind = event["type"]
                if kind == "plan.made":
                    for t in event["tasks"]:
                        tasks[t["id"]] = {"role": t["role"], "depends_on": t.get("depends_on", [])}
                    notes.append(f"plan made: {len(tasks)} sub-tasks in {event.get('project')}")
                elif kind.startswith("task.") and event.get("task") in tasks:
                    state = {
                        "task.dispatched": "dispatched",
                        "task.started": "running",
                        "task.finished": "succeeded",
                        "task.failed": "failed",
                        "task.retry": "pending",
                    }.get(kind)
                    if state:
                        tasks[event["task"]]["state"] = state
                    task = tasks[event["task"]]
                    if kind == "task.output":  # a slow model at work: its latest words
                        task["said"] = (task.get("said", "") + str(event.get("text", "")))[-400:]
                        task["latest"] = _tail(task["said"])
                    elif kind == "task.model_retry":
                        notes.append(
                            f"{event['task']}: model retry {event.get('attempt')}: "
                            f"{event.get('reason')}"
                        )
                    elif kind == "task.tool" and event.get("rejected"):
                        notes.append(f"{event['task']}: refused a bad call of {event.get('tool')}")
                elif kind == "plan.output":
                    planned = notes.pop() if notes and notes[-1].startswith("planning") else ""
                    text = planned.removeprefix("planning: ") + str(event.get("text", ""))
                    notes.append("planning: " + _tail(text, 70))
                elif kind == "plan.model_retry":
                    notes.append(f"planner retry {event.get('attempt')}: {event.get('reason')}")
                elif kind == "file.written":
                    notes.append(f"wrote {event.get('path')}")
                elif kind == "plan.refused":
                    notes.append(f"plan refused: {event.get('reason')}")
                live.update(_table(goal, tasks, notes))
        err.print()
    response = client.get(f"/runs/{run_id}")
    response.raise_for_status()
    run: dict[str, Any] = response.json()
    return run


def show_run(run: dict[str, Any]) -> None:
    """The end of a run, for people: status, files, summary, trace id."""
    status = run["status"]
    colour = "green" if status == "succeeded" else "red"
    out.print(f"[bold {colour}]run {run['id']} {status}[/]")
    if run.get("error"):
        out.print(f"[red]{escape(str(run['error']))}[/]")
    result = run.get("result") or {}
    if result.get("files"):
        out.print("files: " + ", ".join(escape(f) for f in result["files"]))
    if result.get("summary"):
        summary = str(result["summary"]).strip()
        out.print(escape(summary[:800] + ("..." if len(summary) > 800 else "")))
    if result.get("offline"):
        out.print("[dim](written by the offline model)[/]")
    out.print(f"trace id: {run.get('trace_id')}  (microhive trace {run.get('trace_id')})")


@app.command("run")
def run_command(
    goal: Annotated[
        str | None,
        typer.Argument(help="What the agent should do (with --plan: the plan's goal if left out)."),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="Run this plan (YAML, or JSON for .json) instead of asking the planner.",
            show_default=False,
        ),
    ] = None,
    file: FileOption = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Deadline for the run, in seconds.")
    ] = None,
    budget_tokens: Annotated[
        int | None, typer.Option("--budget-tokens", min=1, help="Token budget for the run.")
    ] = None,
    orchestrator: Annotated[
        str | None, typer.Option("--orchestrator", help="Orchestrator service name.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Give the running mesh a goal (or a plan) and show its progress live."""
    body: dict[str, Any] = {}
    if plan is not None:
        with handle_errors():
            body["plan"] = read_plan_file(plan)
        if goal is None and isinstance(body["plan"].get("goal"), str):
            goal = body["plan"]["goal"]
    if not goal or not goal.strip():
        fail("give a goal (microhive run GOAL), or a plan file with a 'goal' (--plan FILE)", 2)
    mesh, mesh_file = load_mesh(file)
    base = orchestrator_url(mesh, orchestrator, mesh_file)
    options: dict[str, Any] = {}
    if timeout:
        options["timeout"] = timeout
    if budget_tokens:
        options["budget_tokens"] = budget_tokens
    body.update(goal=goal, options=options)
    with httpx.Client(base_url=base, timeout=30) as client:
        try:
            response = client.post("/runs", json=body)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the orchestrator at {base} ({exc}); is the mesh up?")
        if response.status_code != 202:
            fail(
                f"the orchestrator refused the {'plan' if plan else 'goal'}: {_reason(response)}", 2
            )
        run_id = response.json()["id"]
        run = follow_run(client, run_id, goal, as_json=as_json)
    if as_json:
        out.out(json.dumps(run), highlight=False)
    else:
        show_run(run)
    if run["status"] != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


def _reason(response: httpx.Response) -> str:
    """What an error answer says (its JSON ``message``), on one line."""
    try:
        detail = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        detail = ""
    detail = detail or response.text or f"HTTP {response.status_code}"
    return " ".join(detail.split())
