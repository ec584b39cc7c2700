"""Checking chat completion bodies before llama.cpp sees them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from microhive.errors import InvalidInput, NotFound
from microhive.modelserver.validation import MAX_MESSAGES, parse_chat_request

ALIAS = "coder"
HI = [{"role": "user", "content": "hi"}]


def parse(body: Any, context_size: int = 4096) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_chat_request(raw, alias=ALIAS, context_size=context_size)


def test_a_plain_request_gets_the_alias_and_a_bounded_max_tokens() -> None:
    chat = parse({"messages": HI, "user": "someone", "metadata": {"k": "v"}})
    assert chat.body == {"messages": HI, "model": ALIAS, "max_tokens": 4096}
    assert not chat.stream and not chat.include_usage


def test_streaming_options_and_the_smaller_token_limit() -> None:
    chat = parse(
        {
            "model": ALIAS,
            "messages": HI,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 50,
            "max_completion_tokens": 20,
            "temperature": 0,
            "seed": 7,
            "stop": ["\n\n"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
        }
    )
    assert chat.stream and chat.include_usage
    assert chat.body["max_tokens"] == 20 and "max_completion_tokens" not in chat.body


def test_a_text_parts_conversation_with_tool_calls_is_accepted() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert parse({"messages": messages}).body["messages"] == messages


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "the body is not valid JSON"),
        (b"", "the body is empty"),
        (b'{"messages": [], "temperature": NaN}', "the body is not valid JSON: NaN"),
        (b"[" * 100_000 + b"]" * 100_000, "the body is not valid JSON"),
        ([1, 2], "the body must be a JSON object, got an array"),
        ({"messages": "hi"}, "'messages' must be an array of message objects, got a string"),
        ({}, "'messages' must be an array of message objects, got null"),
        ({"messages": []}, "at least one message"),
        ({"messages": [HI[0]] * (MAX_MESSAGES + 1)}, f"at most {MAX_MESSAGES}"),
        ({"messages": ["hi"]}, r"'messages\[0\]' must be an object"),
        ({"messages": [{"role": "bogus", "content": "x"}]}, "'messages\\[0\\].role' must be one"),
        ({"messages": [{"role": "user", "content": 5}]}, "must be a string or an array of parts"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "this model reads text only",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "colour": 1}]},
            "unsupported fields: colour",
        ),
        ({"messages": HI, "n_predict": 100000}, "unsupported fields: n_predict"),
        ({"messages": HI, "max_tokens": 5000}, r"context size \(4096\), got 5000"),
        ({"messages": HI, "max_tokens": 0}, "between 1 and the context size"),
        ({"messages": HI, "max_tokens": True}, "'max_tokens' must be an integer, got a boolean"),
        ({"messages": HI, "max_tokens": 2.5}, "'max_tokens' must be an integer"),
        ({"messages": HI, "temperature": "hot"}, "'temperature' must be a number"),
        ({"messages": HI, "temperature": 3}, "'temperature' must be between 0 and 2"),
        ({"messages": HI, "n": 2}, "'n' must be between 1 and 1"),
        ({"messages": HI, "top_logprobs": 100}, "'top_logprobs' must be between 0 and 20"),
        ({"messages": HI, "stop": ["a"] * 9}, "'stop' must be a string or an array of at most 8"),
        ({"messages": HI, "stream": "yes"}, "'stream' must be true or false"),
        ({"messages": HI, "stream_options": {"include_usage": True}}, "only allowed with"),
        ({"messages": HI, "stream": True, "stream_options": {"x": 1}}, "only 'include_usage'"),
        ({"messages": HI, "tools": [{"type": "function"}]}, r"'tools\[0\]' must be"),
        ({"messages": HI, "tools": {}}, "'tools' must be an array"),
        ({"messages": HI, "response_format": {"type": "yaml"}}, "'response_format' must be"),
        (
            {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {}}},
            "'response_format.json_schema.schema' must be a JSON schema object",
        ),
        ({"messages": HI, "model": 5}, "'model' must be a string"),
        (
            {"messages": [{"role": "user", "content": "word " * 30_000}]},
            "the request's text is over 131072 characters",
        ),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(body: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse(body)


def test_another_model_is_not_found() -> None:
    with pytest.raises(NotFound, match="model 'gpt-4' is not served here; this server serves"):
        parse({"model": "gpt-4", "messages": HI})
