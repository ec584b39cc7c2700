"""Real servers on loopback for the gateway tests: uvicorn, SDK upstreams, the gateway."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from microhive.mcp.gateway import Gateway, GatewayHTTP, GatewaySettings, RoleAuth
from microhive.mcp.registry import Registry, RegistryStore, UpstreamSpec
from tests.conftest import eventually as eventually  # re-exported for the gateway tests
from tests.conftest import free_port

from .upstream_server import build

HERE = Path(__file__).parent


@asynccontextmanager
async def serving(app: Any, port: int | None = None, lifespan: str = "on") -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1; yields the base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan=lifespan,
        timeout_graceful_shutdown=2,  # a peer's long-lived listen stream must not hold us
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def upstream(version: str = "v1") -> AsyncIterator[str]:
    """An in-process SDK tool server; yields its MCP URL."""
    async with serving(build(version).streamable_http_app()) as base:
        yield f"{base}/mcp"


@asynccontextmanager
async def upstream_process(
    version: str = "v1", port: int | None = None
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """An SDK tool server in its own process (for kill tests)."""
    port = port or free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once
        [sys.executable, str(HERE / "upstream_server.py"), str(port), version],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("upstream process did not start") from None
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@asynccontextmanager
async def gateway(
    upstreams: list[UpstreamSpec],
    *,
    roles: dict[str, tuple[str | None, tuple[str, ...]]] | None = None,
    admin_token: str | None = None,
    settings: GatewaySettings | None = None,
    registry_path: Path | None = None,
    max_body_bytes: int = 64 * 1024,
) -> AsyncIterator[tuple[Gateway, str]]:
    """A running gateway over real sockets; yields it and its base URL."""
    registry = Registry(upstreams, RegistryStore(registry_path))
    auth = RoleAuth(roles or {}, admin_token)
    async with Gateway(registry, auth, settings) as gw:
        http = GatewayHTTP(gw, max_body_bytes=max_body_bytes)
        async with http.run(), serving(http.app(), lifespan="off") as base:
            yield gw, base


@asynccontextmanager
async def client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    """An official-SDK client (one long-lived session), with a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), cache=None) as c,
    ):
        yield c


def structured(result: Any) -> Any:
    """The structured result of a tool call (MCPServer wraps scalars as {"result": x})."""
    assert not result.is_error, result.content
    data = result.structured_content
    if isinstance(data, dict) and set(data) == {"result"}:
        return data["result"]
    if data is None:
        return json.loads(result.content[0].text)
    return data
