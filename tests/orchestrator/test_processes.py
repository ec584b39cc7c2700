"""The orchestrator and workers as real processes on the embedded bus: kill them mid-run.

Each service runs as ``python -m microhive serve NAME`` (what the supervisor and a
container run). Models are scripted files with a delay, so sub-tasks take long
enough to be caught in the middle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.slow

TASKS = 10


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        plan = {
            "tasks": [
                {"id": f"part-{i}", "role": "researcher", "instruction": f"research part {i}"}
                for i in range(TASKS)
            ]
        }
        (root / "planner.json").write_text(json.dumps({"replies": [json.dumps(plan)]}))
        (root / "worker.json").write_text(
            json.dumps({"delay": 0.4, "cycle": True, "replies": ["part researched"]})
        )
        (root / "microhive.yaml").write_text(
            f"""
bus:
  url: embedded://{root}/bus
stores:
  workflow: sqlite:///{root}/wf.db
models:
  plan:
    provider: scripted
    model: {root}/planner.json
  work:
    provider: scripted
    model: {root}/worker.json
roles:
  planner:
    model: plan
  researcher:
    model: work
services:
  orchestrator:
    kind: orchestrator
    port: {self.port}
  researcher:
    kind: worker
    replicas: 2
    settings:
      role: researcher
      concurrency: 2
      ack_wait: 1.5
"""
        )

    def start(self, name: str, replica: int = 0) -> None:
        key = f"{name}-{replica}"
        log = open(self.root / f"{key}.log", "ab")  # noqa: SIM115 - closed with the process
        args = [sys.executable, "-m", "microhive", "serve", name, "--replica", str(replica)]
        args += ["-f", str(self.root / "microhive.yaml")]
        if name != "orchestrator":
            args += ["--port", str(free_port())]
        self.procs[key] = subprocess.Popen(
            args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        log.close()
        if name == "orchestrator":
            wait_for(self._ready, timeout=20, what="orchestrator ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self, key: str) -> None:
        proc = self.procs.pop(key)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def run(self, run_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/runs/{run_id}", timeout=5).json()  # type: ignore[no-any-return]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """Every event of the run, read from the SSE stream (which ends with the run)."""
        out = []
        with httpx.stream("GET", f"{self.url}/runs/{run_id}/events", timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    out.append(json.loads(line[6:]))
        return out


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop_all()


def _submit(mesh: Mesh) -> str:
    response = httpx.post(f"{mesh.url}/runs", json={"goal": "research ten parts"}, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _started_by(mesh: Mesh, run_id: str) -> Counter[str]:
    workers: Counter[str] = Counter()
    for task in mesh.run(run_id)["tasks"]:
        workers[task["status"]] += 1
    return workers


def test_worker_killed_mid_task_loses_and_doubles_nothing(mesh: Mesh) -> None:
    mesh.start("orchestrator")
    mesh.start("researcher", 0)
    mesh.start("researcher", 1)
    run_id = _submit(mesh)
    # Wait until replica 0 holds a sub-task, then kill it without warning.
    wait_for(
        lambda: _started_by(mesh, run_id)["running"] >= 2, timeout=20, what="sub-tasks running"
    )
    mesh.kill("researcher-0")
    wait_for(
        lambda: mesh.run(run_id)["status"] in ("succeeded", "failed"),
        timeout=60,
        what="run finished",
    )
    run = mesh.run(run_id)
    assert run["status"] == "succeeded", run["error"]
    assert all(t["status"] == "succeeded" for t in run["tasks"])
    events = mesh.events(run_id)
    finished = Counter(e["task"] for e in events if e["type"] == "task.finished")
    assert finished == Counter({f"part-{i}": 1 for i in range(TASKS)})  # none lost, none doubled


def test_orchestrator_killed_mid_run_resumes_without_redoing_work(mesh: Mesh) -> None:
    mesh.start("orchestrator")
    mesh.start("researcher", 0)
    mesh.start("researcher", 1)
    run_id = _submit(mesh)
    wait_for(
        lambda: _started_by(mesh, run_id)["succeeded"] >= 2, timeout=30, what="some tasks done"
    )
    mesh.kill("orchestrator-0")
    mesh.start("orchestrator")
    wait_for(
        lambda: mesh.run(run_id)["status"] in ("succeeded", "failed"),
        timeout=60,
        what="run finished after restart",
    )
    run = mesh.run(run_id)
    assert run["status"] == "succeeded", run["error"]
    events = mesh.events(run_id)
    started = Counter(e["task"] for e in events if e["type"] == "task.started")
    finished = Counter(e["task"] for e in events if e["type"] == "task.finished")
    assert finished == Counter({f"part-{i}": 1 for i in range(TASKS)})
    # No finished sub-task was handed out again after the restart.
    assert all(n == 1 for n in started.values()), started
    assert all(t["attempts"] == 1 for t in run["tasks"])


def test_rest_api_rejects_bad_input_clearly(mesh: Mesh) -> None:
    mesh.start("orchestrator")
    post = f"{mesh.url}/runs"
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"goal": 3}).encode(), "'goal' string"),
        (json.dumps({"goal": "  "}).encode(), "must not be empty"),
        (json.dumps({"goal": "x", "colour": 1}).encode(), "unknown fields: colour"),
        (json.dumps({"goal": "x", "options": {"timeout": -5}}).encode(), "timeout"),
        (json.dumps({"goal": "x", "options": {"speed": 1}}).encode(), "unknown run options"),
    ]
    for body, expected in cases:
        response = httpx.post(post, content=body, timeout=5)
        assert response.status_code in (400, 422), (body, response.status_code)
        assert expected in response.json()["message"], (body, response.json())
    missing = httpx.get(f"{mesh.url}/runs/nope", timeout=5)
    assert missing.status_code == 404
    assert "nope" in missing.json()["message"]
    assert httpx.get(f"{mesh.url}/runs?status=sideways", timeout=5).status_code == 400


def test_events_resume_after_last_event_id(mesh: Mesh) -> None:
    mesh.start("orchestrator")
    mesh.start("researcher", 0)
    run_id = _submit(mesh)
    everything = mesh.events(run_id)
    assert everything[0]["type"] == "run.created"
    assert everything[-1]["type"] == "run.succeeded"
    with httpx.stream(
        "GET",
        f"{mesh.url}/runs/{run_id}/events",
        headers={"Last-Event-ID": str(len(everything) - 1)},
        timeout=10,
    ) as response:
        tail = [json.loads(x[6:]) for x in response.iter_lines() if x.startswith("data: ")]
    assert tail == everything[-1:]
