"""The seed workflow end to end, as 'make demo' runs it: every service a real process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microhive.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_workflow_produces_the_brief_and_its_events(tmp_path: Path) -> None:
    lines: list[str] = []
    run = run_demo(tmp_path / "demo", say=lines.append)
    assert run["status"] == "succeeded", run.get("error")
    result = run["result"]
    project = result["project"]
    assert project.startswith("projects/")
    files = set(result["files"])
    assert f"{project}/findings.json" in files
    assert f"{project}/report.md" in files
    assert result["offline"] is True

    # Every sub-task of the plan ran once and finished with a final answer.
    assert {t["role"] for t in run["tasks"]} >= {"researcher", "writer"}
    assert all(t["status"] == "succeeded" for t in run["tasks"])
    assert all(t["attempts"] == 1 for t in run["tasks"])
    assert all(t["stop"] == "final_answer" for t in run["tasks"])

    # The report quotes the corpus and says where each sentence came from.
    report = next(line for line in lines if "report.md (first lines)" in line)
    assert project in report
    body = "\n".join(lines)
    assert "_(offline model)_" in body
    assert "[library/" in body

    # The workspace announced the new files: signed webhooks verified by the receiver...
    demo = run["demo"]
    assert demo["webhooks_rejected"] == 0
    created = {(d.get("data") or {}).get("path") for d in demo["webhooks"]}
    assert {f"{project}/findings.json", f"{project}/report.md"} <= created
    assert all(d["type"] == "file.created" for d in demo["webhooks"])
    # ...and on the bus, where the hive notifier reacted to each of them.
    sink = Path(demo["project"]) / ".microhive" / "hive-notifications.jsonl"
    notified = {
        (json.loads(line).get("data") or {}).get("path") for line in sink.read_text().splitlines()
    }
    assert {f"{project}/findings.json", f"{project}/report.md"} <= notified
    assert any("verified file.created deliveries" in line for line in lines)


def test_a_demo_run_is_one_trace_across_every_service(tmp_path: Path) -> None:
    from microhive.tracing import TraceStore

    run = run_demo(tmp_path / "demo", say=lambda _: None)
    assert run["status"] == "succeeded", run.get("error")
    project = Path(run["demo"]["project"])
    with TraceStore("sqlite:///.microhive/traces.db", base_dir=project) as store:
        trace_id = store.find(run["id"])
        assert trace_id == run["trace_id"]
        spans = store.spans(trace_id)
    services = {s.service for s in spans}
    assert {
        "orchestrator",
        "researcher",
        "summarizer",
        "writer",
        "gateway",
        "workspace",
    } <= services
    names = {s.name for s in spans}
    assert any(n.startswith("invoke_agent") for n in names)
    assert any(n.startswith("chat ") for n in names)
    assert any(n.startswith("execute_tool") for n in names)
    assert any(n.startswith("tools/call") for n in names)
    # the bus: sub-tasks and file events published and processed inside the run's trace
    kinds = {(s.kind, s.attributes.get("messaging.destination.name")) for s in spans}
    assert ("PRODUCER", "file.created") in kinds
    assert any(k == "CONSUMER" and str(d).startswith("tasks.") for k, d in kinds)
    # parent/child links are intact across processes: every parent is in the trace,
    # and exactly one span (the POST /runs request) is the root.
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None or s.parent_id not in ids]
    assert len(roots) == 1, [(r.service, r.name) for r in roots]
    assert roots[0].service == "orchestrator"
    # no prompt, output or tool-argument content unless opted in
    content = {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
    }
    assert not any(content & set(s.attributes) for s in spans)
