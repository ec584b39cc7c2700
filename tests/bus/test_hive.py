"""The event-driven hive: one file.created event, three services reacting at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from microhive.bus import open_bus
from microhive.hive import HiveNotifier, HiveRunner, Indexer, SentimentAnalyser
from tests.bus.bushelp import Collector, eventually

CLI = "from microhive.cli import main; main()"
TEXT = "I love this product. The results are great and the team was wonderful."


def lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_three_reactors_handle_one_event(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/bus"
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "notes.md").write_text("Terrible, awful, broken. I hate it.")
    sink = tmp_path / "notes.jsonl"
    indexer = Indexer(tmp_path / "index.db", root)
    analyser = SentimentAnalyser(root)
    notifier = HiveNotifier(f"file:{sink}")
    async with (
        HiveRunner(indexer, open_bus(url), "hive-indexer"),
        HiveRunner(analyser, open_bus(url), "hive-sentiment"),
        HiveRunner(notifier, open_bus(url), "hive-notifier"),
        open_bus(url) as bus,
    ):
        scores, dead = Collector(), Collector()
        await bus.subscribe("file.sentiment", scores)
        await bus.subscribe("dlq.>", dead)
        await bus.publish("file.created", {"path": "review.md", "text": TEXT}, msg_id="e1")
        await bus.publish("file.created", {"path": "notes.md"}, msg_id="e2")  # read from disk
        await bus.publish("file.created", {"path": "../../etc/passwd"}, msg_id="e3")
        await bus.publish("file.created", {"nopath": True}, msg_id="e4")
        by_path = {
            json.loads(i["data"])["path"]: json.loads(i["data"]) for i in await scores.wait(2)
        }
        assert by_path["review.md"]["label"] == "positive"
        assert by_path["notes.md"]["label"] == "negative"
        await eventually(lambda: indexer.handled == 2 and len(lines(sink)) == 2, what="all three")
        assert [r["path"] for r in indexer.search("wonderful")] == ["review.md"]
        assert [r["path"] for r in indexer.search("broken")] == ["notes.md"]
        assert {n["data"]["event_id"] for n in lines(sink)} == {"e1", "e2"}  # type: ignore[index]
        # the bad events: dead-lettered by each of the three services, the rest went on
        await dead.wait(6)
        reasons = {i["headers"]["microhive-dlq-reason"] for i in dead.items}
        assert any("outside the workspace" in r for r in reasons)
        assert any("'path' must be a non-empty string" in r for r in reasons)


class Mesh:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def serve(self, name: str) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CLI, "serve", name, "-f", "microhive.yaml"],
                cwd=self.folder,
                stdout=log,
                stderr=log,
                env={**os.environ, "MICROHIVE_LOG_LEVEL": "WARNING"},
            )
        )
        log.close()

    def port(self, name: str) -> int | None:
        path = self.folder / ".microhive" / "ports" / f"{name}-0.port"
        return int(path.read_text()) if path.exists() and path.read_text().strip() else None

    def ready(self, name: str) -> bool:
        for proc in self.procs:
            if proc.poll() is not None:
                raise AssertionError(
                    f"a service exited: {(self.folder / f'{name}.log').read_text()}"
                )
        port = self.port(name)
        if port is None:
            return False
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    (tmp_path / "microhive.yaml").write_text(
        "name: hive\n"
        "bus:\n  url: embedded://.microhive/bus\n"
        "services:\n"
        "  indexer:\n    kind: hive-indexer\n"
        "  sentiment:\n    kind: hive-sentiment\n"
        "  notifier:\n    kind: hive-notifier\n"
    )
    m = Mesh(tmp_path)
    yield m
    m.stop()


@pytest.mark.slow
async def test_hive_services_as_separate_processes(mesh: Mesh) -> None:
    for name in ("indexer", "sentiment", "notifier"):
        mesh.serve(name)
    for name in ("indexer", "sentiment", "notifier"):
        await eventually(lambda n=name: mesh.ready(n), 60.0, f"{name} ready")  # type: ignore[misc]
    async with open_bus(f"embedded://{mesh.folder}/.microhive/bus") as bus:
        scores = Collector()
        await bus.subscribe("file.sentiment", scores, start="beginning")
        tp = "00-4af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        await bus.publish(
            "file.created", {"path": "review.md", "text": TEXT}, headers={"traceparent": tp}
        )
        item = (await scores.wait(1, within=30.0))[0]
    assert json.loads(item["data"])["label"] == "positive"
    assert item["trace_id"] == "4af7651916cd43dd8448eb211c80319c"
    sink = mesh.folder / ".microhive" / "hive" / "notifications.jsonl"
    await eventually(lambda: lines(sink), 30.0, "the notification")
    assert lines(sink)[0]["data"]["trace_id"] == "4af7651916cd43dd8448eb211c80319c"  # type: ignore[index]
    port = mesh.port("indexer")

    def found() -> bool:
        answer = httpx.get(f"http://127.0.0.1:{port}/search", params={"q": "wonderful"}, timeout=5)
        return answer.status_code == 200 and bool(answer.json()["results"])

    await eventually(found, 30.0, "the indexed file")
