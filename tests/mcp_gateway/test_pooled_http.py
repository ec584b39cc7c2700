"""The gateway's lean keep-alive HTTP/1.1 transport, against real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from microhive.mcp.pooled_http import PooledHTTPTransport
from tests.conftest import eventually, free_port

from .harness import serving


class _App:
    """Echo, chunked streaming and a held-open endpoint; remembers client ports."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.release = asyncio.Event()
        self.active = 0
        self.most_active = 0
        self.stream_gate = asyncio.Event()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/echo", self.echo, methods=["POST", "GET"]),
                Route("/stream", self.stream),
                Route("/held", self.held),
            ]
        )

    async def echo(self, request: Request) -> Response:
        assert request.client is not None
        self.ports.append(request.client.port)
        body = await request.body()
        return JSONResponse(
            {"method": request.method, "query": request.url.query, "body": body.decode()},
            headers={"x-seen-length": request.headers.get("content-length", "")},
        )

    async def stream(self, request: Request) -> Response:
        async def parts() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            await self.stream_gate.wait()  # the client must see "first" before this opens
            yield b"data: second\n\n"

        return StreamingResponse(parts(), media_type="text/event-stream")

    async def held(self, request: Request) -> Response:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        return Response(b"done")


@asynccontextmanager
async def client(transport: PooledHTTPTransport, **kw: object) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=transport, **kw) as http:  # type: ignore[arg-type]
        yield http


async def test_requests_and_bodies_round_trip_over_one_kept_alive_connection() -> None:
    state = _App()
    async with serving(state.app()) as base, client(PooledHTTPTransport()) as http:
        for i in range(5):
            response = await http.post(f"{base}/echo?i={i}", content=b"x" * (i * 1000))
            assert response.status_code == 200
            assert response.json() == {
                "method": "POST",
                "query": f"i={i}",
                "body": "x" * (i * 1000),
            }
            assert response.headers["x-seen-length"] == str(i * 1000)
        got = await http.get(f"{base}/echo")
        assert got.json()["method"] == "GET"
        # every request reused the first connection
        assert len(set(state.ports)) == 1, state.ports


async def test_a_streamed_body_is_delivered_as_it_arrives() -> None:
    state = _App()
    async with serving(state.app()) as base, client(PooledHTTPTransport()) as http:
        async with http.stream("GET", f"{base}/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = response.aiter_bytes()
            first = await anext(chunks)
            assert first == b"data: first\n\n"
            state.stream_gate.set()
            rest = b"".join([chunk async for chunk in chunks])
            assert rest == b"data: second\n\n"
        # the chunked body was read to its end: the connection is reused
        await http.post(f"{base}/echo", content=b"after")
        await http.post(f"{base}/echo", content=b"again")
        assert len(set(state.ports)) == 1


async def test_an_abandoned_body_closes_its_connection_instead_of_reusing_it() -> None:
    state = _App()
    async with serving(state.app()) as base, client(PooledHTTPTransport()) as http:
        async with http.stream("GET", f"{base}/stream") as response:
            await anext(response.aiter_bytes())  # leave before the end
        state.stream_gate.set()
        await http.post(f"{base}/echo", content=b"a")
        await http.post(f"{base}/echo", content=b"b")
        assert len(set(state.ports)) == 1  # both on one new connection, not the abandoned one


async def test_the_pool_never_opens_more_than_its_limit_and_queues_the_rest() -> None:
    state = _App()
    transport = PooledHTTPTransport(max_connections=2)
    async with serving(state.app()) as base, client(transport) as http:
        calls = [asyncio.create_task(http.get(f"{base}/held")) for _ in range(6)]
        await eventually(lambda: state.active >= 2, what="two requests to arrive")
        assert state.active == 2
        state.release.set()
        responses = await asyncio.gather(*calls)
        assert [r.content for r in responses] == [b"done"] * 6
        assert state.most_active == 2


async def test_pool_wait_times_out_with_pool_timeout() -> None:
    state = _App()
    transport = PooledHTTPTransport(max_connections=1)
    timeout = httpx2.Timeout(10.0, pool=0.2)
    async with serving(state.app()) as base, client(transport, timeout=timeout) as http:
        first = asyncio.create_task(http.get(f"{base}/held"))
        await eventually(lambda: state.active >= 1, what="the first request to arrive")
        with pytest.raises(httpx2.PoolTimeout):
            await http.get(f"{base}/held")
        state.release.set()
        assert (await first).content == b"done"


async def test_expired_idle_connections_are_not_reused() -> None:
    state = _App()
    async with (
        serving(state.app()) as base,
        client(PooledHTTPTransport(keepalive_expiry=0)) as http,
    ):
        for _ in range(3):
            await http.post(f"{base}/echo", content=b"x")
        assert len(set(state.ports)) == 3


async def test_connection_refused_is_a_connect_error() -> None:
    async with client(PooledHTTPTransport()) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/")


async def test_a_silent_server_gives_a_read_timeout() -> None:
    state = _App()
    timeout = httpx2.Timeout(10.0, read=0.2)
    async with serving(state.app()) as base, client(PooledHTTPTransport(), timeout=timeout) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.get(f"{base}/held")
        state.release.set()
        # the timed-out connection was discarded; the pool still works
        assert (await http.post(f"{base}/echo", content=b"ok")).json()["body"] == "ok"


@asynccontextmanager
async def raw_server(
    reply: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        assert current is not None
        handlers.append(current)
        try:
            await reply(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        async with asyncio.timeout(10):  # each handler ends once the client hung up
            await asyncio.gather(*handlers)
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def test_a_server_that_hangs_up_mid_body_is_a_protocol_error() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async with raw_server(reply) as base, client(PooledHTTPTransport()) as http:
        with pytest.raises(httpx2.RemoteProtocolError, match="middle of the response body"):
            await http.get(f"{base}/")


async def test_a_malformed_response_is_a_protocol_error() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client hangs up on the garbage
        writer.close()

    async with raw_server(reply) as base, client(PooledHTTPTransport()) as http:
        with pytest.raises(httpx2.RemoteProtocolError, match="malformed HTTP response"):
            await http.get(f"{base}/")


async def test_a_body_delimited_by_connection_close_is_read_whole() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async with raw_server(reply) as base, client(PooledHTTPTransport()) as http:
        response = await http.get(f"{base}/")
        assert response.content == b"until the end"
