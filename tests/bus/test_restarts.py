"""Restarting the NATS or Redis server mid-run loses no acknowledged publish.

These start their OWN throwaway servers on free ports (never the shared ones):

* ``nats-server -js -sd <tmp>``: file storage; restarted with SIGTERM (a clean
  shutdown), which keeps every message JetStream acknowledged;
* ``redis-server --appendonly yes --appendfsync always``: every write is fsynced
  to the AOF before the reply, so the server is restarted with SIGKILL.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from microhive.bus import open_bus
from microhive.errors import RuntimeFailure
from tests.bus.bushelp import Collector, eventually
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.services]


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Server:
    """One throwaway server process, restartable on the same port and data dir."""

    def __init__(self, argv: list[str], port: int, stop_signal: signal.Signals, log: Path):
        self.argv = argv
        self.port = port
        self.stop_signal = stop_signal
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out)

    async def start(self) -> None:
        self.launch()
        await eventually(lambda: reachable(self.port), 15.0, f"{self.argv[0]} on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def restart(self) -> None:
        self.stop()
        await self.start()


def need(binary: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[tuple[str, Server]]:
    port = free_port()
    argv = [
        need("nats-server"),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-js",
        "-sd",
        str(tmp_path / "js"),
    ]
    server = Server(argv, port, signal.SIGTERM, tmp_path / "nats.log")
    await server.start()
    yield f"nats://127.0.0.1:{port}?namespace=restart", server
    server.stop()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[tuple[str, Server]]:
    port = free_port()
    argv = [
        need("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
    ]  # fmt: skip
    server = Server(argv, port, signal.SIGKILL, tmp_path / "redis.log")
    await server.start()
    yield f"redis://127.0.0.1:{port}/0?namespace=restart", server
    server.stop()


async def publish_through_restart(url: str, restart: Callable[[], object]) -> None:
    n, restart_at = 300, 100
    acked: set[str] = set()
    failures: list[str] = []
    during: list[int] = []
    restarted = asyncio.Event()
    async with open_bus(url) as bus:
        got = Collector()
        await bus.subscribe("orders.placed", got, queue="restart", start="beginning", ack_wait=2)

        async def publisher() -> None:
            for i in range(n):
                while True:  # retry until acknowledged; the same msg id dedups retries
                    try:
                        await bus.publish("orders.placed", {"i": i}, msg_id=f"o{i}")
                    except RuntimeFailure as exc:
                        failures.append(exc.code)
                        await asyncio.sleep(0.05)  # back off while the server is down
                        continue
                    acked.add(f"o{i}")
                    break

        async def restarter() -> None:
            await eventually(lambda: len(acked) >= restart_at, 30.0, "first publishes")
            during.append(len(acked))
            result = restart()
            if asyncio.iscoroutine(result):
                await result
            restarted.set()

        await asyncio.wait_for(asyncio.gather(publisher(), restarter()), 90)
        assert restarted.is_set() and len(acked) == n
        assert during[0] < n, "the server restarted after the run, not during it"
        await eventually(lambda: acked <= set(got.ids()), 60.0, "every acknowledged message")


async def test_nats_restart_loses_no_acknowledged_publish(
    nats_server: tuple[str, Server],
) -> None:
    url, server = nats_server
    await publish_through_restart(url, server.restart)


async def test_redis_restart_loses_no_acknowledged_publish(
    redis_server: tuple[str, Server],
) -> None:
    url, server = redis_server
    await publish_through_restart(url, server.restart)
