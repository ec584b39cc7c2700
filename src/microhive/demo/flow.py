"""The steps of the demo once its mesh is up (see :mod:`microhive.demo`)."""

from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from microhive.config.default_mesh import SERVICE_OFFSETS
from microhive.demo.receiver import WebhookReceiver

__all__ = ["DemoFlow"]

_LIBRARY = "library"


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class DemoFlow:
    def __init__(
        self, project: Path, base_port: int, receiver: WebhookReceiver, *, say: Callable[..., Any]
    ) -> None:
        from microhive.workspace.client import WorkspaceClient

        self.project = project
        self.port = {name: base_port + off for name, off in SERVICE_OFFSETS.items()}
        self.receiver = receiver
        self.say = say
        self.workspace = WorkspaceClient(f"http://127.0.0.1:{self.port['workspace']}")
        self.orchestrator = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port['orchestrator']}", timeout=30
        )

    def run(self, goal: str) -> dict[str, Any]:
        try:
            self.subscribe_webhook()
            self.load_corpus()
            run = self.run_goal(goal)
            self.report(run)
            run["demo"] = {
                "project": str(self.project),
                "webhooks": list(self.receiver.received),
                "webhooks_rejected": self.receiver.rejected,
            }
            return run
        finally:
            self.workspace.close()
            self.orchestrator.close()

    # ------------------------------------------------------------------ steps

    def subscribe_webhook(self) -> None:
        hook = self.workspace.add_webhook(self.receiver.url, ["file.created"])
        self.receiver.secret = hook["secret"]
        self.say(f"webhook {hook['id']} -> {self.receiver.url} (file.created, signed)")

    def load_corpus(self) -> None:
        from microhive.demo import corpus_files

        files = corpus_files()
        for name, data in files:
            kind = mimetypes.guess_type(name)[0] or "text/plain"
            self.workspace.write(f"{_LIBRARY}/{name}", data, content_type=kind, author="demo")
        self.say(f"loaded {len(files)} documents into the workspace folder {_LIBRARY}/")

        def indexed() -> bool:
            listed = self.workspace.list_files(folder=_LIBRARY)["items"]
            states = [f.get("index_state") for f in listed]
            return len(states) == len(files) and all(
                s in ("indexed", "skipped", "failed") for s in states
            )

        started = time.monotonic()
        _wait(indexed, 300, "the corpus to be indexed", interval=0.5)
        hits = self.workspace.search("bees nesting in gardens", limit=3)
        self.say(
            f"indexed and searchable in {time.monotonic() - started:.1f}s "
            f"(top hit for 'bees nesting in gardens': {hits[0]['path'] if hits else 'none'})"
        )

    def run_goal(self, goal: str) -> dict[str, Any]:
        from microhive.cli.run import follow_run

        response = self.orchestrator.post("/runs", json={"goal": goal})
        response.raise_for_status()
        run_id = response.json()["id"]
        self.say(f"goal: {goal!r} -> run {run_id}")
        return follow_run(self.orchestrator, run_id, goal, as_json=False)

    def report(self, run: dict[str, Any]) -> None:
        from microhive.cli.run import show_run

        show_run(run)
        files = (run.get("result") or {}).get("files") or []
        report = next((f for f in files if f.endswith("report.md")), None)
        if report:
            text = self.workspace.read(report).decode("utf-8", errors="replace")
            self.say(f"\n--- {report} (first lines) ---")
            self.say("\n".join(text.strip().splitlines()[:12]))
            self.say("---")
        self.hive_summary(files)

    def hive_summary(self, files: list[str]) -> None:
        """What the event-driven services did with the run's new files."""
        wanted = {f for f in files if f.endswith((".json", ".md"))}

        def notified() -> set[str]:
            sink = self.project / ".microhive" / "hive-notifications.jsonl"
            if not sink.exists():
                return set()
            seen = set()
            for line in sink.read_text(encoding="utf-8").splitlines():
                data = json.loads(line).get("data") or {}
                seen.add(str(data.get("path")))
            return seen

        try:
            _wait(lambda: wanted <= notified(), 30, "the hive notifier")
        except TimeoutError:
            self.say("hive: the notifier has not seen every new file yet")
        stats = {}
        for name in ("hive-indexer", "hive-sentiment"):
            try:
                stats[name] = httpx.get(
                    f"http://127.0.0.1:{self.port[name]}/stats", timeout=5
                ).json()
            except httpx.HTTPError:
                stats[name] = {}
        sentiment = stats["hive-sentiment"].get("last") or {}
        self.say(
            f"hive: indexer handled {stats['hive-indexer'].get('handled', '?')} file events; "
            f"sentiment last saw {sentiment.get('path')} ({sentiment.get('label')}, "
            f"{sentiment.get('score')}); notifier wrote {len(notified())} notifications"
        )
        created = sorted(str((p.get("data") or {}).get("path")) for p in self.receiver.received)
        self.say(
            f"webhook receiver: {len(created)} verified file.created deliveries "
            f"({self.receiver.rejected} rejected), e.g. {', '.join(created[-3:])}"
        )
