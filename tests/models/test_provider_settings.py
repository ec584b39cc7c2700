"""Settings every provider shares: structured output, retries, streaming, context size,
and how tool calls arrive (native, or written in the text), over the real SDKs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from microhive.config import ModelSpec
from microhive.errors import InvalidInput, TimeoutFailure, UpstreamError, UsageError
from microhive.models import (
    ChatHooks,
    ResponseSchema,
    ScriptedModel,
    SystemMessage,
    ToolSpec,
    UserMessage,
    open_model,
)
from microhive.models.anthropic_messages import AnthropicModel
from microhive.models.base import EVENT_MODEL_RETRY
from microhive.models.openai_compat import OpenAIModel
from microhive.tracing import TracingSettings, setup_tracing

from .wire_server import WireServer, anthropic_message, openai_completion, wire_server

ADD = ToolSpec(
    "calculator.add",
    "Add two numbers.",
    {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
)
ASK = [SystemMessage("role: researcher"), UserMessage("What is 2 + 3?")]
SCHEMA = ResponseSchema(
    "answer",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["value"],
        "properties": {"value": {"type": "number"}},
    },
)


@pytest.fixture
async def server() -> AsyncIterator[WireServer]:
    async with wire_server() as state:
        yield state


def _openai(server: WireServer, **kwargs: Any) -> OpenAIModel:
    kwargs.setdefault("retries", 0)
    return OpenAIModel("m", api_key="k", base_url=server.url + "/v1", **kwargs)


# ------------------------------------------------------------ structured output


async def test_openai_asks_for_the_schema_as_response_format(server: WireServer) -> None:
    server.replies.append((200, openai_completion('{"value": 5}')))
    async with _openai(server) as model:
        result = await model.chat(ASK, response_schema=SCHEMA)
    assert json.loads(result.text) == {"value": 5}
    sent = server.requests[0].body["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "answer"
    assert sent["json_schema"]["schema"] == SCHEMA.schema


async def test_anthropic_forces_a_tool_and_returns_its_input_as_the_text(
    server: WireServer,
) -> None:
    block = {"type": "tool_use", "id": "t1", "name": "answer", "input": {"value": 5}}
    server.replies.append((200, anthropic_message([block], stop_reason="tool_use")))
    async with AnthropicModel("c", api_key="k", base_url=server.url, retries=0) as model:
        result = await model.chat(ASK, response_schema=SCHEMA)
    assert json.loads(result.text) == {"value": 5}
    assert (result.tool_calls, result.finish_reason) == ((), "stop")
    body = server.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "answer"}
    assert body["tools"][0]["input_schema"] == SCHEMA.schema


# ------------------------------------------------------------------- retries


async def test_a_passing_failure_is_retried_visibly(
    server: WireServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = InMemorySpanExporter()
    settings = TracingSettings(store_url=f"sqlite:///{tmp_path / 't.db'}")
    handle = setup_tracing("worker", 0, settings, processors=[SimpleSpanProcessor(memory)])
    # The process-wide provider, for this test only (OTel lets it be set once per process).
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: handle.provider)
    heard: list[tuple[int, str]] = []

    async def on_retry(attempt: int, reason: str, delay: float) -> None:
        heard.append((attempt, reason))

    server.replies += [(503, {"error": {"message": "loading model"}}), (200, openai_completion())]
    with handle:
        async with _openai(server, retries=2) as model:
            result = await model.chat(ASK, hooks=ChatHooks(on_retry=on_retry))
    assert result.text == "Hello from the server."
    assert len(server.requests) == 2
    assert heard and heard[0][0] == 2 and "loading model" in heard[0][1]
    # The retry is on the trace: an event of the one model-call span, which ends ok.
    [chat] = [s for s in memory.get_finished_spans() if s.name == "chat m"]
    [event] = [e for e in chat.events if e.name == EVENT_MODEL_RETRY]
    assert event.attributes is not None
    assert event.attributes["microhive.attempt"] == 2
    assert "loading model" in str(event.attributes["microhive.reason"])


async def test_retries_run_out_with_the_count_in_the_message(server: WireServer) -> None:
    server.replies += [(503, {"error": {"message": "busy"}})] * 2
    async with _openai(server, retries=1) as model:
        with pytest.raises(UpstreamError, match=r"busy.*after 2 attempts"):
            await model.chat(ASK)
    assert len(server.requests) == 2


async def test_a_refused_key_is_not_retried(server: WireServer) -> None:
    server.replies += [(401, {"error": {"message": "bad key"}}), (200, openai_completion())]
    async with _openai(server, retries=3) as model:
        with pytest.raises(UsageError):
            await model.chat(ASK)
    assert len(server.requests) == 1


async def test_each_attempt_has_the_model_timeout(server: WireServer) -> None:
    import asyncio

    server.hold = asyncio.Event()  # the server never answers
    async with _openai(server, retries=1, timeout=0.3) as model:
        with pytest.raises(TimeoutFailure, match=r"within 0.3 s.*after 2 attempts"):
            await model.chat(ASK)
    assert len(server.requests) == 2


# ----------------------------------------------------------------- streaming


async def test_streaming_hands_text_to_the_hook_and_joins_the_answer(server: WireServer) -> None:
    server.replies.append((200, openai_completion("Bees pollinate city gardens.")))
    pieces: list[str] = []

    async def on_text(text: str) -> None:
        pieces.append(text)

    async with _openai(server, stream=True) as model:
        result = await model.chat(ASK, hooks=ChatHooks(on_text=on_text))
    assert result.text == "Bees pollinate city gardens." == "".join(pieces)
    assert len(pieces) > 1
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 5)
    assert server.requests[0].body["stream"] is True


async def test_streamed_tool_calls_are_joined_by_index(server: WireServer) -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "calculator__add", "arguments": '{"a": 2, "b": 3}'},
    }
    server.replies.append((200, openai_completion(None, [call], "tool_calls")))

    async def on_text(text: str) -> None:
        pass

    async with _openai(server, stream=True) as model:
        result = await model.chat(ASK, tools=[ADD], hooks=ChatHooks(on_text=on_text))
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [
        ("calculator.add", {"a": 2, "b": 3})
    ]


# --------------------------------------------------------- tool-call modes


async def test_a_call_written_in_the_content_is_recovered(server: WireServer) -> None:
    # What a small local model does: the call as JSON text, finish_reason "stop".
    text = '```json\n{"name": "calculator__add", "arguments": {"a": 2, "b": 3}}\n```'
    server.replies.append((200, openai_completion(text)))
    async with _openai(server) as model:
        result = await model.chat(ASK, tools=[ADD])
    assert result.finish_reason == "tool_calls"
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [
        ("calculator.add", {"a": 2, "b": 3})
    ]
    assert result.text == ""


async def test_native_mode_leaves_text_alone(server: WireServer) -> None:
    text = '{"name": "calculator__add", "arguments": {"a": 2, "b": 3}}'
    server.replies.append((200, openai_completion(text)))
    async with _openai(server, tool_calls="native") as model:
        result = await model.chat(ASK, tools=[ADD])
    assert result.tool_calls == () and result.text == text


async def test_content_mode_offers_tools_in_the_prompt_not_the_api() -> None:
    model = ScriptedModel(['<tool_call>{"name": "calculator.add", "arguments": {"a": 1}}'])
    model.tool_calls = "content"
    result = await model.chat(ASK, tools=[ADD])
    sent = model.requests[0]
    assert sent.tools == ()
    assert "calculator.add" in sent.system and "<tool_call>" in sent.system
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [
        ("calculator.add", {"a": 1})
    ]


async def test_malformed_arguments_become_a_call_with_an_error(server: WireServer) -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "calculator__add", "arguments": '{"a": 2, "b" 3}'},
    }
    server.replies.append((200, openai_completion(None, [call], "tool_calls")))
    async with _openai(server) as model:
        result = await model.chat(ASK, tools=[ADD])
    [got] = result.tool_calls
    assert got.name == "calculator.add" and dict(got.arguments) == {}
    assert got.error is not None
    assert "not valid JSON at column 14: Expecting ':' delimiter" in got.error


async def test_structured_answers_are_never_read_as_tool_calls() -> None:
    model = ScriptedModel(['{"name": "calculator.add", "arguments": {}}'])
    result = await model.chat(ASK, tools=[ADD], response_schema=SCHEMA)
    assert result.tool_calls == ()


# ------------------------------------------------------------ context size


async def test_context_size_cuts_the_output_limit_and_refuses_overflow() -> None:
    model = ScriptedModel(["ok", "ok"])
    model.context_size = 300
    await model.chat(ASK, max_tokens=1000)
    limit = model.requests[0].max_tokens
    assert limit is not None and limit < 300
    with pytest.raises(InvalidInput, match="context of 300 tokens"):
        await model.chat([UserMessage("word " * 400)])


# ------------------------------------------------------ settings from the mesh


def test_model_settings_come_from_the_mesh_file() -> None:
    spec = ModelSpec(
        provider="openai",
        model="m",
        api_key_env="K",
        timeout=600,
        retries=4,
        tool_calls="content",
        context_size=8192,
        stream=True,
        max_tokens=256,
        temperature=0,
    )
    model = open_model(spec, env={"K": "secret"})
    assert (model.timeout, model.retries, model.tool_calls) == (600, 4, "content")
    assert (model.context_size, model.stream, model.max_tokens) == (8192, True, 256)


def test_a_model_service_needs_the_mesh_and_no_key() -> None:
    from microhive.config import MeshConfig, ServiceSpec

    mesh = MeshConfig(
        services={"llm": ServiceSpec(kind="model-server", port=9911)},
        models={"local": ModelSpec(provider="openai", model="qwen", service="llm")},
    )
    model = open_model(mesh.models["local"], env={}, mesh=mesh)
    assert isinstance(model, OpenAIModel)
    assert model.base_url == "http://127.0.0.1:9911/v1"
    assert model.stream is True  # a local server streams by default
    with pytest.raises(UsageError, match="open it with the mesh"):
        open_model(mesh.models["local"], env={})


async def test_essential_arguments_hide_optional_fields_with_defaults() -> None:
    write = ToolSpec(
        "workspace.write",
        "Write a file.",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"},
                "workspace": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
                "append": {"type": "boolean", "default": False},
                "note": {"type": "string"},
            },
            "required": ["path", "content"],
        },
    )
    model = ScriptedModel(["ok", "ok"])
    model.essential_arguments = True
    await model.chat(ASK, tools=[write])
    shown = model.requests[0].tools[0].parameters["properties"]
    assert set(shown) == {"path", "content", "note"}  # optional without a default stays
    model.essential_arguments = False
    await model.chat(ASK, tools=[write])
    assert set(model.requests[1].tools[0].parameters["properties"]) == set(
        write.parameters["properties"]
    )
