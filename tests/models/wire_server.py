"""A local HTTP server speaking the OpenAI and Anthropic wire formats, for SDK tests.

Each test queues the responses it wants (status + JSON body) and afterwards reads
the requests the SDK actually sent (path, headers, JSON body). It runs uvicorn on
127.0.0.1 with a port picked by the OS, in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class WireServer:
    """Queued replies in, recorded requests out."""

    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    #: When set, a request waits for this event before answering (deadline tests).
    hold: asyncio.Event | None = None
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        if self.hold is not None:
            await self.hold.wait()
        if not self.replies:
            return JSONResponse({"error": {"message": "no reply queued"}}, status_code=500)
        status, payload = self.replies.pop(0)
        if status == 200 and body.get("stream") and "choices" in payload:
            return StreamingResponse(_sse(payload), media_type="text/event-stream")
        return JSONResponse(payload, status_code=status)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.handle, methods=["POST"]),
                Route("/v1/messages", self.handle, methods=["POST"]),
            ]
        )


async def _sse(payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """An OpenAI chat completion as the chunks a streaming server sends: the text a
    few characters at a time, each tool call's arguments in two pieces, then the
    finish reason, then the usage in a chunk of its own."""
    base = {k: payload[k] for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    choice = payload["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    text = message.get("content") or ""
    for i in range(0, len(text), 5):
        yield chunk({"content": text[i : i + 5]})
    for index, call in enumerate(message.get("tool_calls") or ()):
        args = call["function"]["arguments"]
        half = len(args) // 2
        first = {"index": index, "id": call["id"], "type": "function"}
        first["function"] = {"name": call["function"]["name"], "arguments": args[:half]}
        yield chunk({"tool_calls": [first]})
        yield chunk({"tool_calls": [{"index": index, "function": {"arguments": args[half:]}}]})
    yield chunk({}, choice["finish_reason"])
    usage = {**base, "choices": [], "usage": payload["usage"]}
    yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@asynccontextmanager
async def wire_server() -> AsyncIterator[WireServer]:
    state = WireServer()
    config = uvicorn.Config(
        state.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not server.started:  # wait for the condition, with a deadline
        if task.done() or loop.time() > deadline:
            raise RuntimeError("the wire-format test server did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        server.should_exit = True
        await task


def openai_completion(
    content: str | None = "Hello from the server.",
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    usage: tuple[int, int] = (12, 5),
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "test-model-2025",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }


def anthropic_message(
    content: list[dict[str, Any]], stop_reason: str = "end_turn", usage: tuple[int, int] = (20, 7)
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }
