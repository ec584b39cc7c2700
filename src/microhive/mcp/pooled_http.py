"""A lean keep-alive HTTP/1.1 transport for the SDK's HTTP client (``http://`` only).

Why our own: every call the gateway forwards crosses one more HTTP hop, and
profiling the gateway showed the generic client stack (httpx's transport over
httpcore over anyio streams) costing about 40% of the gateway's CPU per call:
several layers of Python per request, and the request head and body written
with two ``send`` system calls. No maintained library gives an ``httpx``
transport that is cheaper for plain keep-alive HTTP/1.1, so this one does only
that, on asyncio's protocol API:

* the request is serialised into one buffer and written with one ``write``;
* the response is parsed by ``httptools`` (the C parser uvicorn uses), which
  also decodes chunked bodies; the body is handed out as it arrives, so a
  streamed ``text/event-stream`` response works like any other;
* idle connections are pooled per origin (LIFO), dropped after
  ``keepalive_expiry`` seconds (before the server's own idle timeout), and a
  connection is reused only after its response was read to the end.

Everything else (``https://``, proxies) goes to the regular httpx transport.
Failures raise httpx's own exception types (``ConnectError``, ``ReadTimeout``,
``RemoteProtocolError`` …), so callers handle them exactly as before.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx2

__all__ = ["PooledHTTPTransport"]

_HIGH_WATER = 256 * 1024  # pause reading a streamed body when this much is unread


class _Connection(asyncio.Protocol):
    """One TCP connection; carries one request/response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: Exception | None = None
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - we never ask to upgrade
            self._fail(httpx2.RemoteProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(httpx2.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and not self.keep_alive and exc is None:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            if not self.headers_done:
                message = "server disconnected without sending a response"
            else:
                message = "server disconnected in the middle of the response body"
            self._fail(httpx2.RemoteProtocolError(message if exc is None else f"{message}: {exc}"))

    # -- httptools callbacks -----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- use -------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self.close()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def wait(self, within: float | None) -> None:
        """Until the parser reports progress (or the connection fails / times out)."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = None
        if within is not None:
            timer = loop.call_later(within, _expire, waiter, within)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx2.ReadTimeout(f"no response data within {timeout:g} s"))


class _Body(httpx2.AsyncByteStream):
    """The response body, read from the connection as it arrives."""

    def __init__(
        self, pool: PooledHTTPTransport, key: tuple[str, int], conn: _Connection, read: float | None
    ) -> None:
        self._pool = pool
        self._key = key
        self._conn: _Connection | None = conn
        self._read = read

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                if conn.chunks:
                    yield conn.take()
                    continue
                if conn.complete:
                    break
                await conn.wait(self._read)
        except BaseException:
            self._conn = None
            conn.close()
            self._pool.release(self._key, conn)
            raise
        self._finish()

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not (conn.complete and conn.keep_alive and not conn.chunks):
            conn.close()  # an unread or unframed body: the connection cannot carry another
        self._pool.release(self._key, conn)

    async def aclose(self) -> None:
        self._finish()


class PooledHTTPTransport(httpx2.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections per origin; ``https`` falls back to httpx's."""

    def __init__(
        self,
        *,
        max_connections: int = 256,
        max_keepalive: int = 64,
        keepalive_expiry: float = 3.0,
    ) -> None:
        self._max = max_connections
        self._max_idle = max_keepalive
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: dict[tuple[str, int], int] = {}
        self._waiters: dict[tuple[str, int], deque[asyncio.Future[None]]] = {}
        self._fallback: httpx2.AsyncHTTPTransport | None = None
        self._limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=keepalive_expiry,
        )
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx2.AsyncHTTPTransport(limits=self._limits)
            return await self._fallback.handle_async_request(request)
        if self._closed:
            raise httpx2.ConnectError("the transport is closed")
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        key = (url.host, url.port or 80)
        head = _head(request, await _body(request))
        conn = await self._acquire(key, timeouts.get("connect"), timeouts.get("pool"))
        read = timeouts.get("read")
        try:
            assert conn.transport is not None
            conn.transport.write(head)
            while not conn.headers_done:
                await conn.wait(read)
        except BaseException:
            conn.close()
            self.release(key, conn)
            raise
        return httpx2.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(self, key, conn, read),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _acquire(
        self, key: tuple[str, int], connect: float | None, pool: float | None
    ) -> _Connection:
        while True:
            idle = self._idle.get(key)
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self._expiry:
                    conn._reset()
                    return conn
                conn.close()
                self._open[key] -= 1
            if self._open.get(key, 0) < self._max:
                break
            # every connection to this origin is busy: wait for one to be released
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(key, deque())
            waiters.append(waiter)
            try:
                async with asyncio.timeout(pool):
                    await waiter
            except TimeoutError:
                raise httpx2.PoolTimeout(f"no free connection to {key[0]}:{key[1]}") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                if waiter in waiters:
                    waiters.remove(waiter)
        self._open[key] = self._open.get(key, 0) + 1
        try:
            return await self._connect(key, connect)
        except BaseException:
            self._open[key] -= 1
            self._wake_one(key)
            raise

    async def _connect(self, key: tuple[str, int], within: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                _transport, conn = await loop.create_connection(_Connection, key[0], key[1])
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from exc
        return conn

    def release(self, key: tuple[str, int], conn: _Connection) -> None:
        """Back to the idle list when reusable; otherwise the slot is freed."""
        if conn.closed or self._closed:
            conn.close()
            self._open[key] -= 1
        else:
            idle = self._idle.setdefault(key, [])
            if len(idle) >= self._max_idle:
                conn.close()
                self._open[key] -= 1
            else:
                conn.idle_since = time.monotonic()
                idle.append(conn)
        self._wake_one(key)

    def _wake_one(self, key: tuple[str, int]) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()


async def _body(request: httpx2.Request) -> bytes:
    try:
        return request.content  # already buffered (the SDK sends bytes)
    except httpx2.RequestNotRead:
        return b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]


def _head(request: httpx2.Request, body: bytes) -> bytes:
    """Request line and headers, then the body, in one buffer."""
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            continue  # framed below from the buffered body
        lines += (name, b": ", value, b"\r\n")
    if body or request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
    lines += (b"\r\n", body)
    return b"".join(lines)
