"""``microhive trace``: waterfall, --json, --last, lookup by run id, errors and the list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from microhive.cli import trace as trace_cli
from microhive.config.model import MeshConfig
from microhive.context import CallContext
from microhive.errors import HopLimitExceeded
from microhive.tracing import (
    TracingSettings,
    agent_span,
    background,
    process_span,
    publish_span,
    setup_tracing,
    tool_span,
)

MESH = "name: demo\nstores:\n  traces: sqlite:///state/traces.db\n"


def _cli() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """Test root, so ``trace`` is a sub-command as in the real CLI."""

    root.add_typer(trace_cli.app)
    return root


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_cli(), ["trace", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def _populate(base: Path) -> tuple[str, str]:
    """Two traces in the mesh's store; the second fails with a loop stop. Returns their ids."""
    mesh = MeshConfig.model_validate(
        {"name": "demo", "stores": {"traces": "sqlite:///state/traces.db"}}
    )
    ids = []
    for service, run_id, fail in (("orchestrator", "run-1", False), ("worker", "run-2", True)):
        with setup_tracing(service, 0, mesh, base_dir=base) as handle:
            p = handle.provider
            with agent_span("planner", run_id=run_id, provider=p) as root:
                ctx = CallContext.new(max_hops=5).next_hop()
                headers = ctx.to_headers()
                with publish_span("embedded", "task.ready", headers=headers, ctx=ctx, provider=p):
                    pass
                with process_span("embedded", "task.ready", headers, ctx=ctx, provider=p):
                    with tool_span("workspace.read", "c1", ctx=ctx, provider=p):
                        pass
                    if fail:
                        with pytest.raises(HopLimitExceeded), tool_span("loop", provider=p):
                            raise HopLimitExceeded("hop limit reached: 5 hops used")
            ids.append(root.trace_id)
    return ids[0], ids[1]


@pytest.fixture
def mesh_dir(project_dir: Path) -> Path:
    (project_dir / "microhive.yaml").write_text(MESH)
    return project_dir


def test_waterfall_by_run_id_shows_the_tree(mesh_dir: Path) -> None:
    first, _ = _populate(mesh_dir)
    code, out, err = _invoke("run-1")
    assert code == 0, err
    assert f"trace {first}" in out and "run run-1" in out
    lines = out.splitlines()
    names = [
        "invoke_agent planner",
        "└─ publish task.ready",
        "   └─ process task.ready",  # a consumer is a child of the message's creation
        "      └─ execute_tool workspace.read",
    ]
    positions = [next(i for i, line in enumerate(lines) if name in line) for name in names]
    assert positions == sorted(positions)
    assert "orchestrator" in out and "4/5" in out  # service and hops columns
    assert "ERROR" not in out


def test_last_shows_errors_and_the_stop_reason(mesh_dir: Path) -> None:
    _, second = _populate(mesh_dir)
    code, out, err = _invoke("--last", "-f", str(mesh_dir / "microhive.yaml"))
    assert code == 0, err
    assert f"trace {second}" in out
    assert "ERROR" in out
    assert "! loop_stopped: hop limit reached: 5 hops used" in out


def test_json_dumps_the_spans(mesh_dir: Path) -> None:
    first, second = _populate(mesh_dir)
    code, out, err = _invoke(first[:8], "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["trace_id"] == first and data["run_id"] == "run-1"
    assert data["spans"][0]["name"] == "invoke_agent planner"
    assert {s["trace_id"] for s in data["spans"]} == {first}
    consumer = next(s for s in data["spans"] if s["kind"] == "CONSUMER")
    publish = next(s for s in data["spans"] if s["kind"] == "PRODUCER")
    assert consumer["links"][0]["span_id"] == publish["span_id"]

    code, out, _ = _invoke("--json")
    assert code == 0
    listed = json.loads(out)
    assert [t["trace_id"] for t in listed] == [second, first]
    assert [t["errors"] > 0 for t in listed] == [True, False]


def test_list_and_errors(mesh_dir: Path, tmp_path: Path) -> None:
    code, _, err = _invoke("--last")
    assert code == 2 and "no trace store" in err
    _populate(mesh_dir)
    code, out, _ = _invoke()
    assert code == 0 and "recent traces" in out and "planner" in out
    code, _, err = _invoke("run-404")
    assert code == 2 and "no trace with run id or trace id 'run-404'" in err
    code, _, err = _invoke("run-1", "--last")
    assert code == 2 and "not both" in err
    code, _, err = _invoke("--last", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2
    url = f"sqlite:///{mesh_dir / 'state' / 'traces.db'}"
    code, out, _ = _invoke("run-2", "--store", url)
    assert code == 0 and "loop_stopped" in out


def test_default_store_without_a_mesh_file(project_dir: Path) -> None:
    handle = setup_tracing("solo", 0, TracingSettings(), base_dir=project_dir)
    with handle, tool_span("calc.add", provider=handle.provider):
        pass
    code, out, err = _invoke("--last")
    assert code == 0, err
    assert "execute_tool calc.add" in out and "solo" in out


def _populate_background(base: Path, polls: int = 3) -> list[str]:
    """A gateway's polls of its tool services, as background traces. Returns their ids."""
    mesh = MeshConfig.model_validate(
        {"name": "demo", "stores": {"traces": "sqlite:///state/traces.db"}}
    )
    ids = []
    with setup_tracing("gateway", 0, mesh, base_dir=base) as handle:
        for _ in range(polls):
            with background(), tool_span("tools/list", provider=handle.provider) as poll:
                ids.append(poll.trace_id)
    return ids


def test_the_list_hides_background_traces_unless_all(mesh_dir: Path) -> None:
    first, second = _populate(mesh_dir)
    polls = _populate_background(mesh_dir)  # the newest traces of the store

    code, out, err = _invoke()
    assert code == 0, err
    assert "planner" in out and "tools/list" not in out
    assert "background traces hidden (--all shows them)" in out
    code, out, _ = _invoke("--all")
    assert code == 0
    assert "gateway: execute_tool tools/list (background)" in out

    code, out, _ = _invoke("--json")
    listed = json.loads(out)
    assert [(t["trace_id"], t["background"]) for t in listed] == [(second, False), (first, False)]
    code, out, _ = _invoke("--json", "--all", "-n", "4")
    listed = json.loads(out)
    assert {t["trace_id"] for t in listed} == {*polls, second}
    assert {t["trace_id"]: t["background"] for t in listed}[polls[0]] is True
    code, out, _ = _invoke("--json", "-n", "1")
    assert [t["trace_id"] for t in json.loads(out)] == [second]  # -n counts shown traces


def test_last_skips_background_traces_unless_all(mesh_dir: Path) -> None:
    _, second = _populate(mesh_dir)
    polls = _populate_background(mesh_dir)
    code, out, err = _invoke("--last", "--json")
    assert code == 0, err
    assert json.loads(out)["trace_id"] == second
    code, out, _ = _invoke("--last", "--all", "--json")
    assert json.loads(out)["trace_id"] in polls
    code, out, _ = _invoke(polls[0][:12])  # named by id: always shown
    assert code == 0 and "execute_tool tools/list" in out


def test_only_background_traces_is_an_empty_list_that_says_why(mesh_dir: Path) -> None:
    _populate_background(mesh_dir, polls=1)
    code, out, _ = _invoke()
    assert code == 0
    assert "no traces in" in out and "--all shows them" in out
    code, _, err = _invoke("--last")
    assert code == 2 and "other than background ones" in err


def test_the_waterfall_shows_why_a_plan_was_refused_and_what_was_retried(
    mesh_dir: Path,
) -> None:
    mesh = MeshConfig.model_validate(
        {"name": "demo", "stores": {"traces": "sqlite:///state/traces.db"}}
    )
    with setup_tracing("orchestrator", 0, mesh, base_dir=mesh_dir) as handle:
        p = handle.provider
        with agent_span("planner", run_id="run-9", provider=p) as plan:
            plan.span.add_event(
                "plan_refused", {"microhive.reason": "task 'write' depends on unknown 'draft'"}
            )
            plan.span.add_event(
                "model_retry",
                {"microhive.attempt": 2, "microhive.reason": "rate limited (429)"},
            )
            plan.span.add_event("output_missing", {"microhive.reason": "report.md was not saved"})
            plan.span.add_event("chunk", {"microhive.reason": "not for people"})
    code, out, err = _invoke("run-9")
    assert code == 0, err
    lines = out.splitlines()
    shown = [line.strip() for line in lines if "! " in line]
    assert [line.split("  +")[0].strip() for line in shown] == [
        "! plan_refused: task 'write' depends on unknown 'draft'",
        "! model_retry: attempt 2: rate limited (429)",
        "! output_missing: report.md was not saved",
    ]
