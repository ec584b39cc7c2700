"""``microhive run`` shows a slow model at work: its latest words, retries, refused calls."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from microhive.cli.run import follow_run

EVENTS: list[dict[str, Any]] = [
    {"type": "plan.output", "text": '{"task_count": 1, '},
    {"type": "plan.made", "project": "projects/p", "tasks": [{"id": "notes", "role": "r"}]},
    {"type": "task.started", "task": "notes"},
    {"type": "task.model_retry", "task": "notes", "attempt": 2, "reason": "server busy"},
    {"type": "task.output", "task": "notes", "text": "Bees visit lavender "},
    {"type": "task.output", "task": "notes", "text": "in city gardens."},
    {"type": "task.tool", "task": "notes", "tool": "ws.write", "rejected": True},
    {"type": "task.finished", "task": "notes"},
    {"type": "run.succeeded"},
]


def _server(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/events"):
        body = "".join(
            f"id: {i}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n" for i, e in enumerate(EVENTS)
        )
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json={"id": "r1", "status": "succeeded"})


def test_the_live_view_shows_streamed_words_retries_and_refused_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = httpx.Client(base_url="http://mesh", transport=httpx.MockTransport(_server))
    with client:
        run = follow_run(client, "r1", "notes about bees", as_json=False)
    assert run["status"] == "succeeded"
    shown = capsys.readouterr().err
    assert "Bees visit lavender in city gardens." in shown  # the model's latest words
    assert "model retry 2: server busy" in shown
    assert "refused a bad call of ws.write" in shown
