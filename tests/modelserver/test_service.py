"""The service in-process, over the stand-in for llama.cpp: SSE framing, usage, error shapes.

The real model's tests (test_server.py) cover the same routes end to end; these
run everywhere, and reach what llama.cpp itself never does here (a stream that
asked for usage but got none, an error in the middle of a stream).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from microhive.config import MeshConfig, ServiceSpec
from microhive.modelserver import engine as engine_module
from microhive.modelserver.service import create_service
from microhive.service import ServiceContext

from .fake_llama import FakeLlama

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLlama:
    llama = FakeLlama(tokens=3)
    monkeypatch.setattr(engine_module, "load_llama_server", lambda settings: llama)
    return llama


@pytest.fixture
async def client(tmp_path: Path, fake: FakeLlama) -> AsyncIterator[httpx.AsyncClient]:
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"weights")
    settings = {
        "model": "tiny.gguf",
        "sha256": hashlib.sha256(b"weights").hexdigest(),
        "alias": "tiny",
        "context_size": 512,
    }
    spec = ServiceSpec(kind="model-server", settings=settings)
    ctx = ServiceContext(
        name="llm",
        spec=spec,
        mesh=MeshConfig(services={"llm": spec}),
        config_path=tmp_path / "microhive.yaml",
    )
    service = create_service(ctx)
    async with service.running():
        transport = httpx.ASGITransport(app=service.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://llm") as http:
            yield http


def events(response: httpx.Response) -> list[Any]:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


async def test_ready_once_loaded_and_the_model_list(client: httpx.AsyncClient) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    models = (await client.get("/v1/models")).json()
    assert models["data"][0]["id"] == "tiny"
    assert models["data"][0]["meta"] == {"file": "tiny.gguf", "context_size": 512, "slots": 1}


async def test_a_completion_is_handed_over_with_the_alias_and_bounded_tokens(
    client: httpx.AsyncClient, fake: FakeLlama
) -> None:
    answer = await client.post("/v1/chat/completions", json={"messages": HI})
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    assert fake.calls == [{"messages": HI, "model": "tiny", "max_tokens": 512}]


async def test_a_stream_is_sse_and_gets_usage_when_llama_cpp_gives_none(
    client: httpx.AsyncClient,
) -> None:
    body = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:4]] == ["t0", "t1", "t2", None]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["model"] == "tiny"
    assert usage_chunk["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


async def test_an_error_mid_stream_is_an_error_event(
    client: httpx.AsyncClient, fake: FakeLlama
) -> None:
    fake.fail_at_end = True
    response = await client.post("/v1/chat/completions", json={"messages": HI, "stream": True})
    data = events(response)
    error = json.loads(data[-1])["error"]
    assert error["message"] == "llama.cpp failed: out of memory"
    assert error["type"] == error["code"] == "model_error"
    assert "[DONE]" not in data


@pytest.mark.parametrize("stream", [False, True])
async def test_errors_come_in_openai_shape(client: httpx.AsyncClient, stream: bool) -> None:
    too_many = await client.post(
        "/v1/chat/completions", json={"messages": HI, "max_tokens": 600, "stream": stream}
    )
    assert too_many.status_code == 400
    error = too_many.json()["error"]
    assert error["type"] == error["code"] == "invalid_input"
    assert "context size (512), got 600" in error["message"]

    other = await client.post("/v1/chat/completions", json={"model": "big", "messages": HI})
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found"


async def test_metrics_count_requests_and_tokens(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json={"messages": HI, "stream": True})
    await client.post(
        "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
    )
    text = (await client.get("/metrics")).text
    assert 'microhive_model_requests_total{outcome="ok",stream="true"} 1.0' in text
    assert 'microhive_model_requests_total{outcome="invalid",stream="false"} 1.0' in text
    assert "microhive_model_completion_tokens_total 3.0" in text
    assert "microhive_model_prompt_tokens_total 10.0" in text
    assert "microhive_model_generation_tokens_per_second_count 1.0" in text
    assert "microhive_model_loaded 1.0" in text
    assert 'microhive_http_errors_total{error="invalid_input"' in text
