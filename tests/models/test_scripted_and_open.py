"""The scripted model, open_model, message round trips and the public surface."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import microhive.models as models
from microhive.config import ModelSpec
from microhive.context import CallContext
from microhive.errors import (
    BudgetExhausted,
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    MissingDependency,
    UpstreamError,
    UsageError,
)
from microhive.models import (
    AssistantMessage,
    ChatResult,
    Message,
    Reply,
    ScriptedModel,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    UserMessage,
    message_from_dict,
    message_to_dict,
    open_model,
)
from microhive.models.offline import OfflineModel
from microhive.models.scripted import ReplyLike

ASK = [UserMessage("What is 2 + 2?")]


async def test_scripted_replays_in_order_and_records_requests() -> None:
    tool = ToolSpec("calculator.add", "adds", {"type": "object", "properties": {}})
    script: list[ReplyLike] = [
        {"tool_calls": [{"name": "calculator.add", "arguments": {"a": 2, "b": 2}}]},
        "It is 4.",
    ]
    async with ScriptedModel(script) as model:
        first = await model.chat(ASK, tools=[tool])
        second = await model.chat([*ASK, first.message(), ToolResultMessage("call_0", "4")])
    assert first.tool_calls == (ToolCall("call_0", "calculator.add", {"a": 2, "b": 2}),)
    assert first.finish_reason == "tool_calls" and first.offline
    assert (second.text, second.finish_reason) == ("It is 4.", "stop")
    assert model.calls == 2
    assert model.requests[0].tools == (tool,)
    assert model.requests[1].messages[-1] == ToolResultMessage("call_0", "4")
    assert first.usage.input_tokens > models.count_tokens("What is 2 + 2?")  # + the tool
    assert second.usage.output_tokens == models.count_tokens("It is 4.")


async def test_scripted_fails_clearly_when_exhausted() -> None:
    model = ScriptedModel(["only one"])
    await model.chat(ASK)
    with pytest.raises(UsageError, match=r"script exhausted: it has 1 replies and this is call 2"):
        await model.chat(ASK)


async def test_scripted_raises_scripted_errors_and_cycles() -> None:
    model = ScriptedModel([UpstreamError("boom"), "fine"], cycle=True)
    with pytest.raises(UpstreamError, match="boom"):
        await model.chat(ASK)
    assert (await model.chat(ASK)).text == "fine"
    with pytest.raises(UpstreamError):
        await model.chat(ASK)  # cycled back to the start
    assert model.calls == 3


async def test_scripted_delay_is_bounded_by_the_deadline() -> None:
    model = ScriptedModel([Reply("slow", delay=30)])
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await model.chat(ASK, context=CallContext.new(timeout=0.2))
    assert time.monotonic() - started < 20  # cancelled, not waited out


async def test_budget_is_checked_before_the_call() -> None:
    model = ScriptedModel(["never"])
    with pytest.raises(BudgetExhausted):
        await model.chat(ASK, context=CallContext.new(budget_tokens=0))
    assert model.calls == 0
    with pytest.raises(DeadlineExceeded):
        await model.chat(ASK, context=CallContext(deadline=time.time() - 5))


async def test_bad_input_is_refused_with_a_clear_message() -> None:
    model = ScriptedModel(["x"])
    with pytest.raises(InvalidInput, match="must not be empty"):
        await model.chat([])
    with pytest.raises(InvalidInput, match=r"messages\[0\]: expected SystemMessage"):
        await model.chat([{"role": "user", "content": "hi"}])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="unique"):
        await model.chat(ASK, tools=[ToolSpec("a"), ToolSpec("a")])
    with pytest.raises(InvalidInput, match="unknown keys"):
        ScriptedModel([{"txt": "typo"}])


async def test_open_model_picks_the_provider_by_spec(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text("delay: 0\nreplies:\n  - hello\n  - text: bye\n", encoding="utf-8")
    async with open_model(ModelSpec(provider="scripted", model=str(script))) as scripted:
        assert isinstance(scripted, ScriptedModel)
        assert [(await scripted.chat(ASK)).text for _ in range(2)] == ["hello", "bye"]
    async with open_model() as default:
        assert isinstance(default, OfflineModel) and default.offline
    env = {"MY_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    spec = ModelSpec(provider="openai", model="gpt-test", api_key_env="MY_KEY", max_tokens=99)
    async with open_model(spec, env=env) as gpt:
        assert gpt.provider == "openai" and gpt.max_tokens == 99
        assert gpt.base_url == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    async with open_model(
        ModelSpec(provider="anthropic", model="c"), {"ANTHROPIC_API_KEY": "k"}
    ) as c:
        assert c.provider == "anthropic"


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(UsageError, match="environment variable OPENAI_API_KEY"):
        open_model(ModelSpec(provider="openai", model="gpt"), env={})
    with pytest.raises(UsageError, match="variable CLAUDE_KEY"):
        open_model(ModelSpec(provider="anthropic", model="c", api_key_env="CLAUDE_KEY"), env={})


def test_missing_sdk_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("openai", "anthropic"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
        for mod in [m for m in sys.modules if m.startswith("microhive.models.") and "_" in m]:
            monkeypatch.delitem(sys.modules, mod)
        with pytest.raises(MissingDependency, match=r"pip install 'microhive\[models\]'"):
            open_model(ModelSpec(provider=name, model="m"), env={f"{name.upper()}_API_KEY": "k"})


def test_bad_script_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"replies": "not a list"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        open_model(ModelSpec(provider="scripted", model=str(bad)))
    with pytest.raises(ConfigError, match="cannot read"):
        open_model(ModelSpec(provider="scripted", model=str(tmp_path / "missing.json")))


def test_messages_and_results_round_trip_through_json() -> None:
    call = ToolCall("c1", "workspace.read", {"path": "a.md"})
    conversation: list[Message] = [
        SystemMessage("role: writer"),
        UserMessage("Write."),
        AssistantMessage("", (call,)),
        ToolResultMessage("c1", "text", "workspace.read", is_error=True),
    ]
    wire = json.loads(json.dumps([message_to_dict(m) for m in conversation]))
    assert [message_from_dict(m) for m in wire] == conversation
    result = ChatResult("hi", (call,), "tool_calls", provider="p", offline=True)
    assert ChatResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    with pytest.raises(InvalidInput, match="unknown message role"):
        message_from_dict({"role": "robot", "content": ""})


def test_public_surface() -> None:
    for name in models.__all__:
        assert hasattr(models, name), name
    assert sorted(models.__all__) == models.__all__ or set(models.__all__) == set(
        dir(models)
    ) & set(models.__all__)
    assert models.available_providers() == ["anthropic", "offline", "openai", "scripted"]
