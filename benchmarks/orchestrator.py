"""Orchestrator benchmark: parallel dispatch against the ideal schedule, and many runs at once.

Starts a real mesh as processes on the embedded bus (one orchestrator, 8 worker
replicas of one role, each working on one sub-task at a time) and measures:

* **makespan** of one run of 64 independent sub-tasks whose model call takes
  0.5 s (a scripted model), from the plan to the run's end, against the ideal
  64 x 0.5 s / 8 = 4.0 s;
* **framework overhead per sub-task**, p50 and p99 over the 64 sub-tasks. For
  each one: from the moment it *could* have started -- it was ready (the plan
  was made) and the replica that ran it was free (done with its previous
  sub-task: that one's result published) -- to the moment the orchestrator
  recorded it finished, minus the model's own 0.5 s. That is its dispatch, the
  claim, the worker's agent loop around the model call (and anything that made
  the model call overrun), the result's publish, the orchestrator taking it and
  the store commit. Waiting for a free replica is not counted: with 64 sub-tasks
  on 8 replicas most sub-tasks wait for one, and that wait is the ideal
  schedule's, not overhead. Nor is one sub-task's result publish counted again
  in the next one's wait (it is the first one's overhead). The timestamps are
  the framework's own: the run's ``plan.made`` and ``task.finished`` events and
  the workers' ``invoke_agent`` spans in the trace store (so this needs tracing);
* **overhead on the critical path**: the makespan beyond the ideal, divided by
  the sub-tasks each replica ran in turn -- what the framework added to the
  run's end per sub-task, whatever it was (this one needs no spans);
* **200 concurrent runs** (one sub-task each) submitted at once: how many finish,
  and that none is lost.

    python benchmarks/orchestrator.py [--json] [--quick] [--no-tracing] [--keep DIR]

(``--no-tracing`` leaves out the per-sub-task figures, which are read from the
spans; ``--keep DIR`` runs the mesh in DIR and leaves it there to look at.)

Targets: makespan <= 1.1x ideal; overhead p50 <= 5 ms per sub-task; 0 lost runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from microhive.tracing import TraceStore

MODEL_DELAY = 0.5
REPLICAS = 8
TRACING = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_mesh(root: Path, tasks: int, runs: int) -> int:
    port = _free_port()
    big = {
        "tasks": [
            {"id": f"t{i}", "role": "worker", "instruction": f"sub-task {i}"} for i in range(tasks)
        ]
    }
    small = {"tasks": [{"id": "only", "role": "worker", "instruction": "one sub-task"}]}
    replies = [json.dumps(big)] + [json.dumps(small)] * runs
    (root / "planner.json").write_text(json.dumps({"replies": replies}))
    (root / "worker.json").write_text(
        json.dumps({"delay": MODEL_DELAY, "cycle": True, "replies": ["done"]})
    )
    (root / "microhive.yaml").write_text(
        f"""
bus: {{url: "embedded://{root}/bus"}}
stores: {{workflow: "sqlite:///{root}/wf.db"}}
models:
  plan: {{provider: scripted, model: "{root}/planner.json"}}
  work: {{provider: scripted, model: "{root}/worker.json"}}
tracing: {{enabled: {"true" if TRACING else "false"}}}
roles:
  planner: {{model: plan}}
  worker: {{model: work}}
services:
  orchestrator: {{kind: orchestrator, port: {port}}}
  worker:
    kind: worker
    replicas: {REPLICAS}
    settings: {{role: worker, concurrency: 1}}
"""
    )
    return port


def _start(root: Path, name: str, replica: int, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "microhive", "serve", name, "--replica", str(replica)]
    args += ["-f", str(root / "microhive.yaml"), "--port", str(port)]
    log = open(root / f"{name}-{replica}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def _ready(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def _events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    out = []
    with client.stream("GET", f"/runs/{run_id}/events", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


def measure(tasks: int, runs: int, keep: Path | None = None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mh-bench-") as tmp:
        root = Path(tmp)
        if keep is not None:  # the mesh's folder (logs, bus, stores, traces) stays there
            keep.mkdir(parents=True)
            root = keep
        port = _write_mesh(root, tasks, runs)
        ports = [port] + [_free_port() for _ in range(REPLICAS)]
        procs = [_start(root, "orchestrator", 0, port)]
        procs += [_start(root, "worker", i, ports[i + 1]) for i in range(REPLICAS)]
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            # Every worker has joined its queue group once it answers /readyz.
            _wait(lambda: all(_ready(p) for p in ports), 60, "every service ready")

            # --- one run of `tasks` independent sub-tasks
            t0 = time.monotonic()
            run_id = client.post("/runs", json={"goal": "benchmark"}).json()["id"]
            events = _events(client, run_id)
            makespan_wall = time.monotonic() - t0
            if events[-1]["type"] != "run.succeeded":
                raise SystemExit(f"benchmark run did not succeed: {events[-1]}")
            finished = {e["task"]: e["at"] for e in events if e["type"] == "task.finished"}
            plan_at = next(e["at"] for e in events if e["type"] == "plan.made")
            trace_id = next(e["trace_id"] for e in events if e["type"] == "run.created")
            done_at = events[-1]["at"]
            makespan = done_at - plan_at
            ideal = tasks * MODEL_DELAY / REPLICAS
            waves = tasks / REPLICAS
            # What the framework adds on the critical path, per sub-task: the makespan
            # beyond the ideal schedule, spread over the sub-tasks each replica ran.
            per_task = (makespan - ideal) / waves * 1000
            results.append(
                {
                    "metric": "makespan",
                    "value": round(makespan, 3),
                    "unit": "s",
                    "baseline": ideal,
                    "ratio": round(makespan / ideal, 3),
                    "target": 1.1,
                }
            )
            results.append(
                {
                    "metric": "makespan_wall_including_planning",
                    "value": round(makespan_wall, 3),
                    "unit": "s",
                    "baseline": ideal,
                    "ratio": round(makespan_wall / ideal, 3),
                }
            )
            critical_path = {
                "metric": "overhead_per_subtask_critical_path",
                "unit": "ms",
                "value": round(per_task, 2),
            }

            # --- many runs at once
            t0 = time.monotonic()
            ids = [
                client.post("/runs", json={"goal": f"run {i}"}).json()["id"] for i in range(runs)
            ]

            _wait(
                lambda: (
                    sum(
                        client.get(f"/runs/{i}").json()["status"] in ("succeeded", "failed")
                        for i in ids
                    )
                    == len(ids)
                ),
                600,
                "concurrent runs",
            )
            statuses = [client.get(f"/runs/{i}").json()["status"] for i in ids]
            elapsed = time.monotonic() - t0
            lost = len(ids) - statuses.count("succeeded")
            results.append(
                {
                    "metric": "concurrent_runs_lost",
                    "value": lost,
                    "unit": "runs",
                    "baseline": runs,
                    "target": 0,
                }
            )
            results.append(
                {
                    "metric": "concurrent_runs_elapsed",
                    "value": round(elapsed, 2),
                    "unit": "s",
                    "baseline": round(runs * MODEL_DELAY / REPLICAS, 2),
                    "ratio": round(elapsed / (runs * MODEL_DELAY / REPLICAS), 3),
                }
            )
            client.close()
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        # The services flushed their spans on SIGTERM: the trace store is complete.
        per_subtask = []
        if TRACING:
            overheads = _overheads(root, trace_id, plan_at, finished)
            p50 = {"metric": "overhead_per_subtask_p50", "unit": "ms", "target": 5.0}
            p99 = {"metric": "overhead_per_subtask_p99", "unit": "ms"}
            per_subtask = [
                {**p50, "value": _quantile(overheads, 0.5)},
                {**p99, "value": _quantile(overheads, 0.99)},
            ]
    return [*results[:2], *per_subtask, critical_path, *results[2:]]


def _overheads(
    root: Path, trace_id: str, ready_at: float, finished: dict[str, float]
) -> list[float]:
    """Per sub-task: could-have-started -> recorded finished, minus the model call (ms).

    Could have started: ready (``ready_at``; every sub-task here is a root of the
    plan) and its replica free: the end of that replica's previous ``invoke_agent``
    span (the worker's handling of a sub-task, which ends once its result is
    published), read from the trace store.
    """
    with TraceStore(f"sqlite:///{root / '.microhive' / 'traces.db'}") as store:
        rows = [s for s in store.spans(trace_id) if s.name == "invoke_agent worker"]
    handled: dict[str, list[tuple[float, float, str]]] = {}
    for span in rows:
        task = span.attributes["microhive.task_id"]
        handled.setdefault(span.instance or "", []).append(
            (span.start_ns / 1e9, span.end_ns / 1e9, task)
        )
    if sorted(t for spans in handled.values() for *_, t in spans) != sorted(finished):
        raise SystemExit(f"trace store: {len(rows)} sub-tasks handled, {len(finished)} finished")
    out = []
    for spans in handled.values():
        free = ready_at
        for _start, end, task in sorted(spans):
            could_start = max(ready_at, free)
            out.append((finished[task] - could_start - MODEL_DELAY) * 1000)
            free = end
    return out


def _quantile(values: list[float], q: float) -> float:
    """The median for q = 0.5, else the nearest-rank quantile."""
    if q == 0.5:
        return round(statistics.median(values), 2)
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="16 sub-tasks, 40 runs")
    parser.add_argument("--no-tracing", action="store_true", help="turn tracing off in the mesh")
    parser.add_argument("--keep", type=Path, help="run the mesh in this new folder and keep it")
    args = parser.parse_args()
    global TRACING
    TRACING = not args.no_tracing
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = measure(16 if args.quick else 64, 40 if args.quick else 200, args.keep)
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    print(f"{'metric':36} {'value':>10} {'unit':5} {'baseline':>9} {'ratio':>7} {'target':>7}")
    for r in results:
        print(
            f"{r['metric']:36} {r['value']:>10} {r['unit']:5} {r.get('baseline', ''):>9} "
            f"{r.get('ratio', ''):>7} {r.get('target', ''):>7}"
        )


if __name__ == "__main__":
    main()
