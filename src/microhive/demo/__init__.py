"""``microhive demo``: the seed workflow, end to end, on embedded defaults.

1. writes the default mesh into a demo project folder and starts it (``up``);
2. starts a webhook receiver and subscribes it to the workspace's
   ``file.created`` (signatures checked with the ``standardwebhooks`` library);
3. loads the bundled corpus (four texts and a PDF, CC0) into the workspace and
   waits until it is searchable;
4. gives the orchestrator the goal; the researchers search and save
   ``findings.json``, the writer reads it over MCP and writes ``report.md``;
   the hive (indexer, sentiment, notifier) reacts to every new file;
5. shows the plan and live progress, then the report, what the hive and the
   webhook receiver saw, and the run's trace id; then stops the mesh.

Everything runs on this machine with no key, no server and no network: the
embedded bus, SQLite, a local folder and the offline model.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from microhive.config.default_mesh import DEFAULT_BASE_PORT, SERVICE_OFFSETS, services_yaml
from microhive.demo.receiver import WebhookReceiver

__all__ = ["DEFAULT_GOAL", "corpus_files", "demo_mesh_yaml", "free_base_port", "run_demo"]

DEFAULT_GOAL = "research and write a brief about pollinators in cities"
ROLE_TOKEN_ENV = "MICROHIVE_DEMO_TOKEN_{role}"
_PORTS = max(SERVICE_OFFSETS.values()) + 2  # the last offset has a second replica


def corpus_files() -> list[tuple[str, bytes]]:
    """The bundled demo documents (name, content), the README excluded."""
    folder = resources.files("microhive.demo") / "corpus"
    return sorted(
        (f.name, f.read_bytes()) for f in folder.iterdir() if f.is_file() and f.name != "README.md"
    )


def free_base_port(start: int = DEFAULT_BASE_PORT) -> int:
    """The first base port (from ``start``, in steps of 100) whose whole range is free."""
    for base in range(start, 60000, 100):
        if all(_free(base + i) for i in range(_PORTS)):
            return base
    raise RuntimeError("no free range of ports for the demo mesh")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_mesh_yaml(base_port: int) -> str:
    """The demo's mesh file: the default services, offline models, role tokens."""
    roles = {
        "researcher": (
            "searches the workspace and extracts material; saves findings.json",
            '["workspace.*", "pdf.*", "web.*"]',
        ),
        "summarizer": ("condenses what was found into key points", '["workspace.*"]'),
        "writer": ("reads findings.json and writes report.md", '["workspace.*"]'),
    }
    role_lines = "".join(
        f"  {name}:\n    model: default\n    description: {desc}\n    tools: {tools}\n"
        f"    token_env: {ROLE_TOKEN_ENV.format(role=name.upper())}\n"
        for name, (desc, tools) in roles.items()
    )
    text = f"""\
# The demo mesh: every microhive service on this machine, offline.
version: 1
name: microhive-demo
host: 127.0.0.1
bus:
  url: embedded://.microhive/bus
stores:
  workflow: sqlite:///.microhive/workflow.db
  traces: sqlite:///.microhive/traces.db
  workspace: file://.microhive/workspace
models:
  default:
    provider: offline
roles:
  planner:
    model: default
{role_lines}security:
  # The demo's webhook receiver listens on loopback, so private targets are allowed.
  allow_private_targets: true
{services_yaml(base_port)}"""
    return text


def role_tokens() -> dict[str, str]:
    """Fresh gateway tokens for the demo's roles, as environment variables."""
    return {
        ROLE_TOKEN_ENV.format(role=role): secrets.token_urlsafe(24)
        for role in ("RESEARCHER", "SUMMARIZER", "WRITER")
    }


def _cli(args: list[str], project: Path, env: dict[str, str]) -> int:
    command = [sys.executable, "-m", "microhive", *args, "--file", str(project / "microhive.yaml")]
    return subprocess.call(command, cwd=project, env=env)


def run_demo(
    project: Path,
    *,
    goal: str = DEFAULT_GOAL,
    keep: bool = False,
    say: Any = print,
) -> dict[str, Any]:
    """Run the seed workflow; return the finished run. ``say`` prints progress lines."""
    from microhive.demo.flow import DemoFlow

    project = project.resolve()
    env = dict(os.environ)
    if (project / ".microhive" / "supervisor.pid").exists():
        _cli(["down"], project, env)
    if project.exists():
        shutil.rmtree(project)
    (project / "inbox").mkdir(parents=True)
    for name, data in corpus_files():
        (project / "inbox" / name).write_bytes(data)
    base = free_base_port()
    (project / "microhive.yaml").write_text(demo_mesh_yaml(base), encoding="utf-8")
    env.update(role_tokens())
    say(f"demo mesh in {project} (ports {base}-{base + _PORTS - 1}); starting it...")
    started = time.monotonic()
    if _cli(["up", "--timeout", "300"], project, env) != 0:
        _cli(["down"], project, env)
        raise RuntimeError("the demo mesh did not start; see the messages above")
    say(f"mesh up in {time.monotonic() - started:.1f}s")
    try:
        with WebhookReceiver() as receiver:
            flow = DemoFlow(project, base, receiver, say=say)
            return flow.run(goal)
    finally:
        if keep:
            say(f"the mesh keeps running: microhive status --file {project}/microhive.yaml")
        else:
            _cli(["down"], project, env)
