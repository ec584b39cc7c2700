"""Shared test fixtures.

Backend tests talk to real servers on loopback. When one is unreachable the test
skips and says why -- unless ``MICROHIVE_REQUIRE_SERVICES=1`` (set by ``.ci/run``),
in which case the missing server fails the test instead.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import time
from collections.abc import Awaitable, Callable
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
