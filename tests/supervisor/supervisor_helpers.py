"""Helpers for the supervisor tests: a project folder and a way to run the real CLI.

Every test runs ``python -m microhive ...`` as a subprocess in a fresh project
folder, against real processes and sockets. Teardown stops whatever a test left
running, so a failing test never leaks processes into the next one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

TINY = Path(__file__).with_name("tiny_service.py")


def tiny(*extra: str, **spec: Any) -> dict[str, Any]:
    """A ``kind: command`` service running tiny_service.py on the port it is given."""
    return {"kind": "command", "command": [sys.executable, str(TINY), "{port}", *extra], **spec}


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


class Project:
    """A project folder with a mesh file, and the CLI run inside it."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MICROHIVE_") and not k.startswith("MICROHIVE__")
        }
        self.env["COLUMNS"] = "200"

    @property
    def state_dir(self) -> Path:
        return self.dir / ".microhive"

    def write(self, services: dict[str, Any], **top: Any) -> Path:
        path = self.dir / "microhive.yaml"
        path.write_text(yaml.safe_dump({"name": "test", **top, "services": services}))
        return path

    def run(self, *args: str, timeout: float = 45, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "microhive", *args],
            cwd=self.dir,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "microhive", *args],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def replica(self, service: str, index: int = 0) -> dict[str, Any]:
        entries: list[dict[str, Any]] = self.status()["services"]
        for entry in entries:
            if entry["service"] == service and entry["replica"] == index:
                return entry
        raise AssertionError(f"no replica {service}-{index} in status")

    def recorded(self, service: str, index: int = 0) -> dict[str, Any]:
        """A replica as state.json records it (cheap to poll; no live probe)."""
        entries: list[dict[str, Any]] = self.state()["replicas"]
        for entry in entries:
            if entry["service"] == service and entry["replica"] == index:
                return entry
        raise AssertionError(f"no replica {service}-{index} in state.json")

    def recorded_log_pids(self, service: str, index: int = 0) -> list[int]:
        """Every pid tiny_service logged for a replica ('listening on ... pid N')."""
        text = (self.state_dir / "logs" / f"{service}-{index}.log").read_text()
        return [int(pid) for pid in re.findall(r"^listening on .* pid (\d+)$", text, re.M)]

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return data

    def recorded_pids(self) -> list[int]:
        try:
            state = self.state()
        except (OSError, ValueError):
            return []
        pids = [state["supervisor"]["pid"]]
        pids += [r["pid"] for r in state["replicas"] if r["pid"]]
        return pids


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def is_ours(pid: int) -> bool:
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return "microhive" in cmdline or str(TINY) in cmdline
