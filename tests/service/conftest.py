"""Start real service processes from a mesh file, the way the supervisor does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).parent
TOKEN = "s3cret-token-for-tests"
TOKEN_ENV = "MICROHIVE_TEST_SERVICE_TOKEN"

_LAUNCH = (
    "import sys; from microhive.service import serve_service; "
    "sys.exit(serve_service(sys.argv[1], sys.argv[2], port=int(sys.argv[3])))"
)


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``condition`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition!r}")
        time.sleep(0.02)


def write_mesh(folder: Path, services: dict[str, dict[str, Any]], *, token: bool = False) -> Path:
    mesh: dict[str, Any] = {"version": 1, "name": "test", "services": services}
    if token:
        mesh["security"] = {"token_env": TOKEN_ENV}
    path = folder / "microhive.yaml"
    path.write_text(yaml.safe_dump(mesh), encoding="utf-8")
    return path


@dataclass
class ServiceProcess:
    """One ``serve_service`` subprocess, its log file and (once ready) its port."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path
    port: int = 0
    _closed: list[bool] = field(default_factory=lambda: [False])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def wait_ready(self) -> None:
        def listening() -> bool:
            if self.popen.poll() is not None:
                pytest.fail(
                    f"service exited with {self.popen.returncode} before listening:\n"
                    + self.log_text()
                )
            return self.port_file.exists() and self.port_file.read_text().strip() != ""

        wait_until(listening, what="the service to write its port file")
        self.port = int(self.port_file.read_text())

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


def launch(
    mesh: Path, name: str, *, port: int = 0, env: dict[str, str] | None = None
) -> ServiceProcess:
    """Start ``serve_service(mesh, name)`` in a child process (not waiting for it)."""
    log_path = mesh.parent / f"{name}.log"
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, mesh.name, name, str(port)],
            cwd=mesh.parent,
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    port_file = mesh.parent / ".microhive" / "ports" / f"{name}-0.port"
    return ServiceProcess(popen, log_path, port_file)


@pytest.fixture
def start_service() -> Iterator[Callable[..., ServiceProcess]]:
    """Start a service and wait until it listens; every process is killed at the end."""
    started: list[ServiceProcess] = []

    def start(mesh: Path, name: str, **kwargs: Any) -> ServiceProcess:
        proc = launch(mesh, name, **kwargs)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.close()
