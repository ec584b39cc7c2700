"""The model server with a real model (the packaged Qwen2.5-Coder 0.5B), over real sockets.

One server process serves the whole session (``real_model_server`` in
tests/conftest.py). Prompts are short, ``max_tokens`` at most 32, temperature 0.
Nothing here asserts on timings: the machine may be busy.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RealModelServer, eventually

pytestmark = [pytest.mark.realmodel, pytest.mark.timeout(300)]

HELLO = [{"role": "user", "content": "Reply with one word: hello"}]


@pytest.fixture
async def llm(real_model_server: RealModelServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=real_model_server.base_url,
        api_key=real_model_server.api_key or "unused",
        max_retries=0,
        timeout=120,
    ) as client:
        yield client


@pytest.fixture
async def http(real_model_server: RealModelServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=real_model_server.url, headers=real_model_server.headers(), timeout=120
    ) as client:
        yield client


async def metrics(http: httpx.AsyncClient) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels (``name{a=b}``)."""
    text = (await http.get("/metrics")).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_health_readiness_and_the_model_list(
    real_model_server: RealModelServer, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/healthz")).status_code == 200
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == [{"name": "model", "ok": True, "error": None}]

    models = (await http.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [real_model_server.model]
    assert models["data"][0]["meta"]["context_size"] == 4096
    one = await http.get(f"/v1/models/{real_model_server.model}")
    assert one.status_code == 200 and one.json()["id"] == real_model_server.model
    other = await http.get("/v1/models/gpt-4")
    assert other.status_code == 404
    assert "this server serves" in other.json()["error"]["message"]

    async with httpx.AsyncClient(base_url=real_model_server.url) as anonymous:
        assert (await anonymous.get("/v1/models")).status_code == 401


async def test_chat_completion_through_the_openai_sdk(
    llm: AsyncOpenAI, real_model_server: RealModelServer, http: httpx.AsyncClient
) -> None:
    before = await metrics(http)
    answer = await llm.chat.completions.create(
        model=real_model_server.model, messages=HELLO, max_tokens=16, temperature=0
    )
    assert answer.model == real_model_server.model
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert (answer.choices[0].message.content or "").strip()
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 16

    after = await metrics(http)
    key = "microhive_model_requests_total{outcome=ok,stream=false}"
    assert after[key] == before.get(key, 0) + 1
    generated = "microhive_model_completion_tokens_total"
    assert after[generated] == before[generated] + answer.usage.completion_tokens
    prompt = "microhive_model_prompt_tokens_total"
    assert after[prompt] == before[prompt] + answer.usage.prompt_tokens
    speed = "microhive_model_generation_tokens_per_second_count"
    assert after[speed] >= before[speed]


async def test_streaming_through_the_openai_sdk(
    llm: AsyncOpenAI, real_model_server: RealModelServer
) -> None:
    stream = await llm.chat.completions.create(
        model=real_model_server.model,
        messages=HELLO,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finishes, usages = "", [], []
    async for chunk in stream:
        assert chunk.model == real_model_server.model
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        if chunk.usage is not None:
            usages.append(chunk.usage)
    assert text.strip()
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert len(usages) == 1 and 1 <= usages[0].completion_tokens <= 16


async def test_raw_stream_is_server_sent_events_ending_in_done(
    http: httpx.AsyncClient, real_model_server: RealModelServer
) -> None:
    body = {"messages": HELLO, "max_tokens": 8, "temperature": 0, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert not any("usage" in c for c in chunks)  # not asked for


async def test_json_schema_response_format_gives_valid_json(
    llm: AsyncOpenAI, real_model_server: RealModelServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}, "unit": {"enum": ["apples", "pears"]}},
        "required": ["answer", "unit"],
        "additionalProperties": False,
    }
    answer = await llm.chat.completions.create(
        model=real_model_server.model,
        messages=[{"role": "user", "content": "I have 2 apples and get 3 more. How many?"}],
        max_tokens=32,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "count", "schema": schema, "strict": True},
        },
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)


async def test_a_tools_request_is_answered(
    llm: AsyncOpenAI, real_model_server: RealModelServer
) -> None:
    # Qwen2.5-Coder writes its tool calls as JSON text; llama.cpp may or may not lift
    # them into tool_calls. Either way the answer must be well formed.
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    answer = await llm.chat.completions.create(
        model=real_model_server.model,
        messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        tools=[tool],
        max_tokens=32,
        temperature=0,
    )
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason in ("stop", "tool_calls", "length")
    assert message.tool_calls or (message.content or "").strip()


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "the body is not valid JSON"),
        (b'{"messages": "hi"}', {}, 400, "'messages' must be an array"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}',
            {},
            400,
            "context size (4096), got 5000",
        ),
        (
            b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}',
            {},
            404,
            "model 'gpt-4' is not served here",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}]}',
            {"content-type": "text/plain"},
            400,
            "expected Content-Type: application/json",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, '
            b'"response_format": {"type": "json_schema", '
            b'"json_schema": {"schema": {"type": "wrong"}}}}',
            {},
            400,
            "llama.cpp refused the request",
        ),
        (  # refused before the first chunk of a stream: still a real 400
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true, '
            b'"response_format": {"type": "json_schema", '
            b'"json_schema": {"schema": {"type": "wrong"}}}}',
            {},
            400,
            "unrecognized type wrong",
        ),
    ],
)
async def test_bad_requests_get_a_4xx_that_says_why(
    http: httpx.AsyncClient,
    content: bytes,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    sent = {"content-type": "application/json", **headers}
    response = await http.post("/v1/chat/completions", content=content, headers=sent)
    assert response.status_code == status
    error = response.json()["error"]  # OpenAI's shape: {"error": {"message", "type", "code"}}
    assert message in error["message"]
    assert error["type"] == ("not_found" if status == 404 else "invalid_input")


async def test_the_sdk_sees_an_unknown_model_as_not_found(llm: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        await llm.chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=4)


async def test_a_client_that_leaves_mid_stream_stops_the_generation(
    http: httpx.AsyncClient,
) -> None:
    before = await metrics(http)
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Count from 1 to 5000, one number per line."}],
        "max_tokens": 4000,
        "temperature": 0,
        "stream": True,
    }
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break  # leaving the block closes the connection mid-stream

    async def stopped() -> bool:
        now = await metrics(http)
        return (
            now["microhive_model_generations_stopped_total"]
            == before["microhive_model_generations_stopped_total"] + 1
            and now["microhive_model_slots_busy"] == 0
        )

    await eventually(stopped, within=120, what="the abandoned generation to stop")
    after = await metrics(http)
    key = "microhive_model_requests_total{outcome=cancelled,stream=true}"
    assert after[key] == before.get(key, 0) + 1
