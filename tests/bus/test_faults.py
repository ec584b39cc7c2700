"""Fault tests with real processes, on every durable backend.

A queue-group member is SIGKILLed mid-handling; a poison message is dead-lettered
by another process with backoff; two relay processes form a cycle that stops at
the hop limit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from microhive.bus import open_bus
from microhive.context import CallContext
from tests.bus.bushelp import Collector, eventually
from tests.bus.busproc import open_ledger

BUSPROC = str(Path(__file__).with_name("busproc.py"))

pytestmark = pytest.mark.slow


@pytest.fixture(params=["embedded", "nats", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param != "embedded":
        request.applymarker(pytest.mark.services)
    return str(request.getfixturevalue(f"{request.param}_bus_url"))


class Procs:
    """Processes started by one test; all are stopped (by pid) at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        ready = self.tmp / f"{name}.ready"
        with (self.tmp / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, BUSPROC, *args, "--ready", str(ready)], stdout=log, stderr=log
            )
        self.started.append(proc)
        return proc

    async def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = self.spawn(name, *args)
        ready = self.tmp / f"{name}.ready"

        def up() -> bool:
            if proc.poll() is not None:
                log = (self.tmp / f"{name}.log").read_text()
                raise AssertionError(f"{name} exited with {proc.returncode}: {log}")
            return ready.exists()

        await eventually(up, 30.0, f"{name} ready")
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def rows(db: sqlite3.Connection, sql: str, *args: object) -> list[tuple[object, ...]]:
    return db.execute(sql, args).fetchall()


async def test_killed_member_hands_its_messages_to_another(
    url: str, procs: Procs, tmp_path: Path
) -> None:
    n = 1000
    effects = str(tmp_path / "effects.db")
    db = open_ledger(effects)
    common = [url, "jobs.run", "workers", effects, "--ack-wait", "1.0"]
    # The victim's handler takes far longer than the test: whatever it holds when
    # it is killed is, for sure, in the middle of being handled.
    victim = await procs.start("victim", "consume", *common, "--work", "60")
    async with open_bus(url) as bus:
        for chunk in range(0, n, 100):
            await asyncio.gather(
                *(
                    bus.publish("jobs.run", {"amount": i + 1}, msg_id=f"job-{i}")
                    for i in range(chunk, min(chunk + 100, n))
                )
            )
    pid = victim.pid
    # With 8 handler slots a member stops asking for more once fewer than 2 are free
    # (its low-water mark), so it holds 7 or 8, depending on how its batches arrived.
    await eventually(
        lambda: rows(db, "SELECT COUNT(*) FROM attempts WHERE pid = ?", pid)[0][0] >= 7,
        30.0,
        "the victim to hold 7 or 8 messages",
    )
    await procs.start("survivor", "consume", *common, "--work", "0.001", "--concurrency", "16")
    await eventually(
        lambda: rows(db, "SELECT COUNT(*) FROM applied")[0][0] >= 100, 30.0, "the run to be going"
    )
    os.kill(pid, signal.SIGKILL)
    victim.wait(10)
    in_flight = {
        r[0]
        for r in rows(
            db,
            "SELECT msg_id FROM attempts WHERE pid = ? AND phase = 'start' AND msg_id NOT IN "
            "(SELECT msg_id FROM attempts WHERE pid = ? AND phase = 'done')",
            pid,
            pid,
        )
    }
    assert in_flight, "the victim was killed while handling nothing"
    await eventually(
        lambda: rows(db, "SELECT COUNT(*) FROM applied")[0][0] >= n, 60.0, f"{n} effects"
    )
    applied = dict(rows(db, "SELECT msg_id, pid FROM applied"))
    assert set(applied) == {f"job-{i}" for i in range(n)}
    assert rows(db, "SELECT value FROM total")[0][0] == n * (n + 1) // 2  # each applied once
    assert len(in_flight) in (7, 8)
    assert all(applied[m] != pid for m in in_flight)  # the survivor finished them
    db.close()


async def test_poison_message_from_another_process_is_dead_lettered_with_backoff(
    url: str, procs: Procs, tmp_path: Path
) -> None:
    effects = str(tmp_path / "effects.db")
    db = open_ledger(effects)
    await procs.start(
        "consumer", "consume", url, "jobs.*", "poisoned", effects, "--max-deliveries", "3"
    )
    async with open_bus(url) as bus:
        dead = Collector()
        await bus.subscribe("dlq.jobs.>", dead, start="beginning")
        await bus.publish("jobs.bad", b"poison", msg_id="pill")
        await bus.publish("jobs.good", {"amount": 1}, msg_id="fine")
        item = (await dead.wait(1, within=30.0))[0]
    await eventually(lambda: rows(db, "SELECT COUNT(*) FROM applied")[0][0] == 1)
    starts = [r[0] for r in rows(db, "SELECT at FROM attempts WHERE msg_id = 'pill' ORDER BY at")]
    assert len(starts) == 3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.2 * 0.9 and gaps[1] >= 0.3 * 0.9, gaps  # backoff, no hot loop
    headers = item["headers"]
    assert "poison pill" in headers["microhive-dlq-reason"]
    assert [h["attempt"] for h in json.loads(headers["microhive-dlq-history"])] == [1, 2, 3]
    db.close()


async def test_cycle_between_two_services_stops_at_the_hop_limit(url: str, procs: Procs) -> None:
    await procs.start("ping", "relay", url, "cycle.a", "cycle.b")
    await procs.start("pong", "relay", url, "cycle.b", "cycle.a")
    tp = "00-3af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = CallContext.from_headers({"traceparent": tp, "microhive-hops": "8"})
    async with open_bus(url) as bus:
        dead = Collector()
        await bus.subscribe("dlq.cycle.>", dead, start="beginning")
        with ctx.activate():
            await bus.publish("cycle.a", b"ball")
        item = (await dead.wait(1, within=30.0))[0]
    assert item["headers"]["microhive-dlq-code"] == "hop_limit"
    assert item["headers"]["microhive-hops"] == "0"
    assert item["trace_id"] == "3af7651916cd43dd8448eb211c80319c"
