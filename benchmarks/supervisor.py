"""How long the supervisor takes to bring a mesh up, restart a killed replica, and stop it.

The baseline, measured in the same run, is the same processes started directly
(Popen + polling each /readyz), with no supervisor or CLI in between, so the ratio
is what ``microhive up`` adds. The restart time includes the first backoff
delay (0.5 s by default).

    .venv/bin/python benchmarks/supervisor.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from microhive.supervisor._os import free_port

SERVER = """\
import signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args):
        pass

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever(poll_interval=0.1)
"""


def _ready(client: httpx.Client, port: int) -> bool:
    try:
        return client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _wait(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark timed out")
        time.sleep(0.01)


def baseline(script: Path, n: int) -> float:
    """Start n servers directly and wait for every /readyz."""
    ports = [free_port("127.0.0.1") for _ in range(n)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(script), str(p)]) for p in ports]
    with httpx.Client(trust_env=False, timeout=1) as client:
        _wait(lambda: all(_ready(client, p) for p in ports))
    elapsed = time.perf_counter() - t0
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()
    return elapsed


def cli(project: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "microhive", *args], cwd=project, check=True,
                   capture_output=True)  # fmt: skip


def supervised(project: Path, script: Path, n: int) -> dict[str, float]:
    services = {
        f"s{i}": {"kind": "command", "command": [sys.executable, str(script), "{port}"]}
        for i in range(n)
    }
    (project / "microhive.yaml").write_text(yaml.safe_dump({"name": "bench", "services": services}))
    t0 = time.perf_counter()
    cli(project, "up")
    up = time.perf_counter() - t0

    state_file = project / ".microhive" / "state.json"
    victim = json.loads(state_file.read_text())["replicas"][0]
    t0 = time.perf_counter()
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> bool:
        entry = json.loads(state_file.read_text())["replicas"][0]
        return bool(entry["state"] == "ready" and entry["pid"] not in (None, victim["pid"]))

    _wait(restarted)
    restart = time.perf_counter() - t0

    t0 = time.perf_counter()
    cli(project, "down")
    down = time.perf_counter() - t0
    return {"up": up, "restart": restart, "down": down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer services and rounds")
    parser.add_argument("--json", action="store_true", help="one JSON object per metric")
    args = parser.parse_args()
    n, rounds = (3, 1) if args.quick else (8, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "server.py"
        script.write_text(SERVER)
        base = min(baseline(script, n) for _ in range(rounds))
        runs = []
        for i in range(rounds):
            project = root / f"p{i}"
            project.mkdir()
            runs.append(supervised(project, script, n))
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    rows = [
        {"metric": f"up_{n}_services", "value": best["up"], "unit": "s", "baseline": base,
         "ratio": best["up"] / base, "target": 5.0},
        {"metric": "restart_after_sigkill", "value": best["restart"], "unit": "s",
         "baseline": None, "ratio": None, "target": 2.0},
        {"metric": f"down_{n}_services", "value": best["down"], "unit": "s", "baseline": None,
         "ratio": None, "target": 5.0},
    ]  # fmt: skip
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"supervisor, {n} services, best of {rounds}")
    print(f"{'metric':<24}{'value':>10}{'baseline':>10}{'ratio':>8}{'target':>8}")
    for row in rows:
        b = f"{row['baseline']:.3f}" if row["baseline"] is not None else "-"
        r = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        print(f"{row['metric']:<24}{row['value']:>9.3f}s{b:>10}{r:>8}{row['target']:>7}s")


if __name__ == "__main__":
    main()
