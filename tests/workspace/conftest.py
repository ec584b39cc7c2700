"""Workspace fixtures: a real store on disk, real HTTP servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from microhive.workspace import Workspace

from .wshelp import Server, settings


@pytest.fixture
async def ws(tmp_path: Path) -> AsyncIterator[Workspace]:
    """A started workspace (hashing embedder, background loops running)."""
    async with Workspace(settings(tmp_path / "store")) as workspace:
        yield workspace


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(app: Any, port: int = 0) -> Server:
        server = await Server(app, port).start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()
