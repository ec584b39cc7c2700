"""The OpenAI-compatible and Anthropic providers against local wire-format servers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from microhive.context import CallContext
from microhive.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
    UsageError,
)
from microhive.models import (
    Message,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    UserMessage,
)
from microhive.models.anthropic_messages import AnthropicModel
from microhive.models.openai_compat import OpenAIModel

from .wire_server import WireServer, anthropic_message, openai_completion, wire_server

SEARCH = ToolSpec(
    "workspace.search",
    "Search the workspace.",
    {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)
CONVERSATION: list[Message] = [
    SystemMessage("role: researcher"),
    UserMessage("Find facts about solar power."),
]


@pytest.fixture
async def server() -> AsyncIterator[WireServer]:
    async with wire_server() as state:
        yield state


def openai_model(server: WireServer, **kwargs: Any) -> OpenAIModel:
    return OpenAIModel(
        "test-model",
        api_key="test-key",
        base_url=server.url + "/v1",
        retries=0,
        key_env="TEST_OPENAI_KEY",
        **kwargs,
    )


def anthropic_model(server: WireServer) -> AnthropicModel:
    return AnthropicModel(
        "claude-test", api_key="test-key", base_url=server.url, retries=0, key_env="TEST_KEY"
    )


# ------------------------------------------------------------------ openai


async def test_openai_text_answer_and_the_request_sent(server: WireServer) -> None:
    server.replies.append((200, openai_completion()))
    async with openai_model(server, max_tokens=300, temperature=0.2) as model:
        result = await model.chat(CONVERSATION, tools=[SEARCH])
    assert result.text == "Hello from the server."
    assert (result.finish_reason, result.tool_calls, result.offline) == ("stop", (), False)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 5)
    assert (result.provider, result.model) == ("openai", "test-model-2025")
    sent = server.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.body["model"] == "test-model"
    assert sent.body["messages"] == [
        {"role": "system", "content": "role: researcher"},
        {"role": "user", "content": "Find facts about solar power."},
    ]
    assert sent.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "workspace__search",  # dots are not allowed in wire names
                "description": "Search the workspace.",
                "parameters": dict(SEARCH.parameters),
            },
        }
    ]
    assert (sent.body["max_tokens"], sent.body["temperature"]) == (300, 0.2)


async def test_openai_tool_calls_both_ways(server: WireServer) -> None:
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "workspace__search", "arguments": '{"query": "solar"}'},
    }
    server.replies.append((200, openai_completion(None, [call], "tool_calls")))
    server.replies.append((200, openai_completion("Solar is cheap.")))
    async with openai_model(server) as model:
        first = await model.chat(CONVERSATION, tools=[SEARCH])
        assert first.finish_reason == "tool_calls" and first.text == ""
        assert first.tool_calls == (ToolCall("call_9", "workspace.search", {"query": "solar"}),)
        history = [
            *CONVERSATION,
            first.message(),
            ToolResultMessage("call_9", '{"results": []}', "workspace.search"),
        ]
        final = await model.chat(history, tools=[SEARCH])
    assert final.text == "Solar is cheap."
    assert server.requests[1].body["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "workspace__search", "arguments": '{"query": "solar"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": '{"results": []}'},
    ]


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, UsageError, "TEST_OPENAI_KEY"),
        (400, InvalidInput, "refused the request"),
        (404, NotFound, "model name"),
        (429, UpstreamError, "rate limiting"),
        (500, UpstreamError, "answered with an error (500)"),
    ],
)
async def test_openai_errors_are_converted(
    server: WireServer, status: int, error: type[Exception], words: str
) -> None:
    server.replies.append((status, {"error": {"message": "server says no", "type": "x"}}))
    async with openai_model(server) as model:
        with pytest.raises(error, match="server says no") as caught:
            await model.chat(CONVERSATION)
    assert words in str(caught.value)
    if status == 429:
        assert not isinstance(caught.value, UsageError)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_is_service_unavailable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    async with OpenAIModel("m", api_key="k", base_url=url + "/v1", retries=0) as model:
        with pytest.raises(ServiceUnavailable, match="cannot reach"):
            await model.chat(CONVERSATION)
    async with AnthropicModel("m", api_key="k", base_url=url, retries=0) as claude:
        with pytest.raises(ServiceUnavailable, match="cannot reach"):
            await claude.chat(CONVERSATION)


async def test_deadline_passed_refuses_and_deadline_reached_cancels(server: WireServer) -> None:
    async with openai_model(server) as model:
        with pytest.raises(DeadlineExceeded, match="not called"):
            await model.chat(CONVERSATION, context=CallContext(deadline=time.time() - 1))
        assert server.requests == []
        server.hold = asyncio.Event()  # the server will not answer until released
        with pytest.raises(DeadlineExceeded, match="deadline reached"):
            await model.chat(CONVERSATION, context=CallContext.new(timeout=0.3))
        assert len(server.requests) == 1


# --------------------------------------------------------------- anthropic


async def test_anthropic_text_answer_and_the_request_sent(server: WireServer) -> None:
    server.replies.append((200, anthropic_message([{"type": "text", "text": "Hi there."}])))
    async with anthropic_model(server) as model:
        result = await model.chat(CONVERSATION, tools=[SEARCH], context=CallContext.new())
    assert (result.text, result.finish_reason, result.offline) == ("Hi there.", "stop", False)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (20, 7)
    assert (result.provider, result.model) == ("anthropic", "claude-test")
    sent = server.requests[0]
    assert sent.path == "/v1/messages" and "anthropic-version" in sent.headers
    # the key travels as x-api-key (older SDKs) or as a bearer token (newer ones)
    assert "test-key" in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    assert sent.body["system"] == "role: researcher"
    assert sent.body["max_tokens"] == 4096
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Find facts about solar power."}]}
    ]
    assert sent.body["tools"] == [
        {
            "name": "workspace__search",
            "description": "Search the workspace.",
            "input_schema": dict(SEARCH.parameters),
        }
    ]


async def test_anthropic_tool_calls_both_ways(server: WireServer) -> None:
    server.replies.append(
        (
            200,
            anthropic_message(
                [
                    {"type": "text", "text": "Let me search."},
                    {
                        "type": "tool_use",
                        "id": "tu_1",
                        "name": "workspace__search",
                        "input": {"query": "solar"},
                    },
                    {
                        "type": "tool_use",
                        "id": "tu_2",
                        "name": "workspace__search",
                        "input": {"query": "storage"},
                    },
                ],
                stop_reason="tool_use",
            ),
        )
    )
    server.replies.append((200, anthropic_message([{"type": "text", "text": "Done."}])))
    async with anthropic_model(server) as model:
        first = await model.chat(CONVERSATION, tools=[SEARCH])
        assert first.finish_reason == "tool_calls" and first.text == "Let me search."
        assert [c.to_dict() for c in first.tool_calls] == [
            {"id": "tu_1", "name": "workspace.search", "arguments": {"query": "solar"}},
            {"id": "tu_2", "name": "workspace.search", "arguments": {"query": "storage"}},
        ]
        history = [
            *CONVERSATION,
            first.message(),
            ToolResultMessage("tu_1", "solar facts"),
            ToolResultMessage("tu_2", "index offline", is_error=True),
        ]
        final = await model.chat(history, tools=[SEARCH])
    assert final.text == "Done."
    assert server.requests[1].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me search."},
                {
                    "type": "tool_use",
                    "id": "tu_1",
                    "name": "workspace__search",
                    "input": {"query": "solar"},
                },
                {
                    "type": "tool_use",
                    "id": "tu_2",
                    "name": "workspace__search",
                    "input": {"query": "storage"},
                },
            ],
        },
        {
            "role": "user",  # both results in one user turn
            "content": [
                {"type": "tool_result", "tool_use_id": "tu_1", "content": "solar facts"},
                {
                    "type": "tool_result",
                    "tool_use_id": "tu_2",
                    "content": "index offline",
                    "is_error": True,
                },
            ],
        },
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, UsageError),
        (400, InvalidInput),
        (429, UpstreamError),
        (500, UpstreamError),
        (529, UpstreamError),
    ],
)
async def test_anthropic_errors_are_converted(
    server: WireServer, status: int, error: type[Exception]
) -> None:
    body = {"type": "error", "error": {"type": "some_error", "message": "server says no"}}
    server.replies.append((status, body))
    async with anthropic_model(server) as model:
        with pytest.raises(error, match="server says no") as caught:
            await model.chat(CONVERSATION)
    assert str(status) in str(caught.value)


async def test_token_budget_caps_the_output_limit(server: WireServer) -> None:
    server.replies.append((200, anthropic_message([{"type": "text", "text": "ok"}])))
    async with anthropic_model(server) as model:
        ctx = CallContext.new(budget_tokens=50)
        result = await model.chat(CONVERSATION, context=ctx)
    assert server.requests[0].body["max_tokens"] == 50
    assert result.charge(ctx).budget_tokens == 50 - 27
