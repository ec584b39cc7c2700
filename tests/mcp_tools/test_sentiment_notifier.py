"""The sentiment analyser on real sentences, and the notifier to a log file and a webhook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from microhive.config import MeshConfig
from microhive.errors import ConfigError, InvalidInput, TargetRefused, UpstreamError
from microhive.netpolicy import AddressPolicy
from microhive.service import ServiceContext
from microhive.tools import notifier as notifier_module
from microhive.tools import sentiment as sentiment_module
from microhive.tools.notifier import Notifier
from microhive.tools.sentiment import SentimentResult, analyze

from .conftest import serve


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The new release is fantastic and the team did a great job!", "positive"),
        ("I love how fast the search is now.", "positive"),
        ("The build is broken again and the logs are useless.", "negative"),
        ("This is not good at all.", "negative"),
        ("The meeting is at 3pm in room 4.", "neutral"),
        ("The service was VERY bad!!!", "negative"),
    ],
)
def test_sentiment_labels_real_sentences(text: str, label: str) -> None:
    result = analyze(text)
    assert isinstance(result, SentimentResult)
    assert result.label == label
    assert -1 <= result.score <= 1


def test_sentiment_handles_negation_intensity_and_documents() -> None:
    assert analyze("good").score > 0 > analyze("not good").score
    assert analyze("very good").score > analyze("good").score
    doc = analyze("I love the new dashboard. The login page is broken and slow.")
    assert [s.label for s in doc.sentences] == ["positive", "negative"]
    assert doc.to_dict()["sentences"][0]["text"] == "I love the new dashboard."
    empty = analyze("   ")
    assert (empty.label, empty.score) == ("neutral", 0.0)
    with pytest.raises(InvalidInput, match="limit"):
        analyze("a" * (sentiment_module.MAX_TEXT_CHARS + 1))
    with pytest.raises(InvalidInput, match="string"):
        analyze(42)  # type: ignore[arg-type]


async def test_sentiment_tool_over_mcp() -> None:
    async with Client(sentiment_module.build_service().mcp_server()) as client:
        result = await client.call_tool("analyze", {"text": "What a wonderful day!"})
    assert result.structured_content is not None
    assert result.structured_content["label"] == "positive"


async def test_notifier_appends_json_lines_to_a_log_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "notes.jsonl"
    async with Notifier(f"file:{log}", source="tests") as notifier:
        receipt = await notifier.send("deploy finished", level="warning", data={"v": 2})
        assert receipt.sink == "file" and receipt.target == str(log)
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(notifier.send, f"message {i} " + "x" * 5000)
        with pytest.raises(InvalidInput, match="level"):
            await notifier.send("hi", level="loud")
        with pytest.raises(InvalidInput, match="non-empty"):
            await notifier.send("  ")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 41
    first = lines[0]
    assert (first["message"], first["level"], first["data"], first["source"]) == (
        "deploy finished",
        "warning",
        {"v": 2},
        "tests",
    )
    assert first["id"] == receipt.id
    assert sorted(int(line["message"].split()[1]) for line in lines[1:]) == list(range(40))


class Receiver:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200

    def app(self) -> Starlette:
        async def hook(request: Request) -> JSONResponse:
            self.received.append({"body": await request.json(), "headers": dict(request.headers)})
            return JSONResponse({"ok": self.status == 200}, status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


async def test_notifier_posts_to_a_webhook_under_the_address_policy() -> None:
    receiver = Receiver()
    with serve(receiver.app()) as base:
        url = f"{base}/hook"
        async with Notifier(url) as default:
            with pytest.raises(TargetRefused):
                await default.send("should not leave")
        assert receiver.received == []
        async with Notifier(
            url, policy=AddressPolicy(allow_private=True), headers={"x-hive": "1"}
        ) as notifier:
            receipt = await notifier.send("build green", title="CI")
            assert (receipt.sink, receipt.status_code) == ("webhook", 200)
            receiver.status = 500
            with pytest.raises(UpstreamError, match="answered 500"):
                await notifier.send("fails")
    body = receiver.received[0]["body"]
    assert (body["message"], body["title"], body["id"]) == ("build green", "CI", receipt.id)
    assert receiver.received[0]["headers"]["x-hive"] == "1"


async def test_notifier_mesh_service_and_tool(tmp_path: Path) -> None:
    mesh = MeshConfig.model_validate(
        {"services": {"alerts": {"kind": "notifier", "settings": {"sink": "file:out/alerts.log"}}}}
    )
    ctx = ServiceContext.from_mesh(mesh, "alerts", config_path=tmp_path / "microhive.yaml")
    with serve(notifier_module.create_service(ctx)) as base:
        async with Client(base + "/mcp") as client:
            tool = (await client.list_tools()).tools[0]
            assert tool.name == "notify" and tool.annotations is not None
            assert tool.annotations.destructive_hint is False
            result = await client.call_tool("notify", {"message": "hello", "level": "error"})
            assert not result.is_error
            bad = await client.call_tool("notify", {"message": "x", "level": "loud"})
            assert bad.is_error
    line = json.loads((tmp_path / "out" / "alerts.log").read_text())
    assert (line["message"], line["level"], line["source"]) == ("hello", "error", "alerts")
    empty = MeshConfig.model_validate({"services": {"alerts": {"kind": "notifier"}}})
    with pytest.raises(ConfigError, match=r"settings\.sink"):
        notifier_module.create_service(ServiceContext.from_mesh(empty, "alerts"))
