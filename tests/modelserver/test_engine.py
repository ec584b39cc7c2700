"""The engine's threading, slots, cancellation and error mapping, over a stand-in for llama.cpp.

The stand-in has ``xllamacpp.Server``'s calling convention (a blocking
``handle_chat_completions(body, callback=None)`` called from a worker thread;
a callback returning ``True`` stops the stream) and is paced by events the test
sets, so nothing here waits on the clock.
"""

from __future__ import annotations

from typing import Any

import pytest

from microhive.errors import InvalidInput, ServiceUnavailable
from microhive.modelserver.engine import LlamaEngine, ModelError
from microhive.modelserver.settings import parse_settings
from tests.conftest import eventually

from .fake_llama import FakeLlama


def engine_for(fake: FakeLlama, slots: int = 1) -> LlamaEngine:
    settings = parse_settings({"model": "m.gguf", "slots": slots})
    return LlamaEngine(settings, loader=lambda _: fake)


async def test_a_stream_yields_every_chunk_then_ends() -> None:
    engine = engine_for(FakeLlama(tokens=3))
    await engine.load()
    chunks = [c async for c in engine.stream({"messages": []})]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert texts == ["t0", "t1", "t2", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert engine.active == 0
    await engine.aclose()


async def test_cancel_stops_the_generation_and_frees_the_slot() -> None:
    fake = FakeLlama(tokens=1000, pause_after=2)
    engine = engine_for(fake)
    stopped: list[bool] = []
    engine.on_stopped = lambda: stopped.append(True)
    await engine.load()
    stream = engine.stream({"messages": []})
    assert (await anext(stream))["choices"][0]["delta"]["content"] == "t0"
    assert (await anext(stream))["choices"][0]["delta"]["content"] == "t1"

    stream.cancel()  # what the service does when the client goes away
    fake.resume.set()

    await eventually(lambda: engine.active == 0, what="the slot to be freed")
    assert fake.stopped_at == 2
    assert stream.stopped_early and stopped == [True]
    await engine.aclose()


async def test_requests_beyond_the_slots_wait_without_a_thread() -> None:
    fake = FakeLlama()
    fake.release.clear()
    engine = engine_for(fake, slots=1)
    await engine.load()
    first = engine.stream({"messages": [], "n": 1})
    second = engine.stream({"messages": [], "n": 2})
    await eventually(
        lambda: engine.active == 1 and engine.waiting == 1, what="one busy, one waiting"
    )
    assert len(fake.calls) == 1

    fake.release.set()
    assert len([c async for c in first]) == 6
    assert len([c async for c in second]) == 6
    assert [call["n"] for call in fake.calls] == [1, 2]
    assert (engine.active, engine.waiting) == (0, 0)
    await engine.aclose()


async def test_a_stream_cancelled_while_waiting_never_reaches_llama_cpp() -> None:
    fake = FakeLlama()
    fake.release.clear()
    engine = engine_for(fake, slots=1)
    await engine.load()
    busy = engine.stream({"messages": [], "n": 1})
    waiting = engine.stream({"messages": [], "n": 2})
    await eventually(lambda: engine.waiting == 1, what="the second stream to wait")
    waiting.cancel()
    fake.release.set()
    assert len([c async for c in busy]) == 6
    assert [c async for c in waiting] == []
    assert [call["n"] for call in fake.calls] == [1]
    await engine.aclose()


async def test_complete_returns_the_answer() -> None:
    engine = engine_for(FakeLlama())
    await engine.load()
    answer = await engine.complete({"messages": []})
    assert answer["choices"][0]["message"]["content"] == "ok"
    await engine.aclose()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (
            {"error": {"code": 400, "message": "request exceeds the context size"}},
            InvalidInput,
            "exceeds the context size",
        ),
        ({"error": {"code": 500, "message": "boom"}}, ModelError, "llama.cpp failed: boom"),
        ({"raise": ValueError("bad schema")}, InvalidInput, "llama.cpp refused the request"),
        ({"raise": RuntimeError("crash")}, ModelError, "RuntimeError: crash"),
    ],
)
async def test_llama_cpp_errors_become_ours(
    body: dict[str, Any], error: type[Exception], message: str, stream: bool
) -> None:
    engine = engine_for(FakeLlama())
    await engine.load()

    async def ask() -> None:
        if stream:
            _ = [c async for c in engine.stream(body)]
        else:
            await engine.complete(body)

    with pytest.raises(error, match=message):
        await ask()
    await eventually(lambda: engine.active == 0, what="the slot to be freed")
    await engine.aclose()


async def test_nothing_is_answered_before_the_model_is_loaded() -> None:
    engine = engine_for(FakeLlama())
    with pytest.raises(ServiceUnavailable, match="not loaded"):
        await engine.complete({"messages": []})
    with pytest.raises(ServiceUnavailable, match="not loaded"):
        engine.stream({"messages": []})


async def test_close_stops_open_streams_and_drops_the_model() -> None:
    fake = FakeLlama(tokens=1000, pause_after=1)
    engine = engine_for(fake)
    await engine.load()
    stream = engine.stream({"messages": []})
    await anext(stream)
    fake.resume.set()
    await engine.aclose()
    assert fake.stopped_at is not None and fake.stopped_at < 1000
    assert not engine.loaded
