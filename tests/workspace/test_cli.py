"""``microhive ws`` and ``microhive webhooks`` against a real service over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from typer.testing import CliRunner

from microhive.cli import webhooks as webhooks_cli
from microhive.cli import ws as ws_cli
from microhive.service import Service
from microhive.workspace.service import build_service

from .wshelp import Receiver, serve_in_thread, settings

runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    service = build_service(Service(name="workspace"), settings(tmp_path / "store"))
    with serve_in_thread(service.asgi()) as base:
        yield base


def run(app: object, *args: str) -> str:
    result = runner.invoke(app, list(args))  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


def test_put_ls_cat_versions_search_rm(url: str, tmp_path: Path) -> None:
    src = tmp_path / "notes.md"
    src.write_text("Bees dance to share where the flowers are.")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00\x01" * 700_000)  # over the progress-bar threshold
    assert "notes/notes.md v1" in run(ws_cli.app, "put", "notes/notes.md", str(src), "--url", url)
    run(ws_cli.app, "put", "blobs/big.bin", str(big), "--url", url)
    listed = json.loads(run(ws_cli.app, "ls", "--url", url, "--json"))
    assert [i["path"] for i in listed] == ["blobs/big.bin", "notes/notes.md"]
    assert run(ws_cli.app, "cat", "notes/notes.md", "--url", url).startswith("Bees dance")
    stale = runner.invoke(
        ws_cli.app, ["put", "notes/notes.md", str(src), "--if-version", "0", "--url", url]
    )
    assert stale.exit_code == 1 and "expected version 0" in stale.output
    versions = json.loads(run(ws_cli.app, "versions", "notes/notes.md", "--url", url, "--json"))
    assert [v["version"] for v in versions] == [1]
    hits = json.loads(
        run(ws_cli.app, "search", "dance", "--mode", "keyword", "--url", url, "--json")
    )
    assert isinstance(hits, list)
    assert "deleted notes/notes.md" in run(ws_cli.app, "rm", "notes/notes.md", "--url", url)
    missing = runner.invoke(ws_cli.app, ["cat", "notes/notes.md", "--url", url])
    assert missing.exit_code == 2 and "no file" in missing.output
    escape = runner.invoke(ws_cli.app, ["cat", "../etc/passwd", "--url", url])
    assert escape.exit_code != 0


def test_webhooks_cli(url: str) -> None:
    receiver = Receiver()
    with serve_in_thread(receiver.app()) as hook_base:
        made = json.loads(run(webhooks_cli.app, "add", hook_base + "/hook", "--url", url, "--json"))
        secret = made["secret"]
        hooks = json.loads(run(webhooks_cli.app, "ls", "--url", url, "--json"))
        assert [h["id"] for h in hooks] == [made["id"]]
        assert "secret" not in hooks[0]
        run(webhooks_cli.app, "test", made["id"], "--url", url)
        import time

        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        headers, body = receiver.requests[0]
        assert Verifier(secret).verify(body, headers)["type"] == "webhook.test"
        rows = json.loads(run(webhooks_cli.app, "deliveries", made["id"], "--url", url, "--json"))
        run(webhooks_cli.app, "redeliver", str(rows[0]["id"]), "--url", url)
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.requests) == 2
        assert receiver.requests[1][0]["webhook-id"] == receiver.requests[0][0]["webhook-id"]
