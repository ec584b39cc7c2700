"""Helpers shared by the workspace tests (imported by conftest and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from microhive.workspace import WorkspaceSettings
from tests.conftest import eventually as eventually  # re-exported for the workspace tests


def settings(root: Path, **overrides: Any) -> WorkspaceSettings:
    values: dict[str, Any] = {
        "store": f"file://{root}",
        "embedder": "hashing",
        "poll_interval": 0.2,
        "allow_private_targets": True,
        "webhook_schedule": [0.05, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2],
        "webhook_timeout": 2.0,
    }
    values.update(overrides)
    return WorkspaceSettings(**values)


class Server:
    """A uvicorn server on a free loopback port, in the test's event loop."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Server:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        await eventually(self._started, what="uvicorn to start")
        return self

    async def _started(self) -> bool:
        if self.task is not None and self.task.done():
            self.task.result()
        return self.server.started

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task
        self.sock.close()


class Receiver:
    """A webhook receiver: records requests; answers with a programmable status."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.headers: dict[str, str] = {}

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.requests.append((dict(request.headers), body))
            return Response(status_code=self.status, headers=self.headers)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (for sync clients such as the CLI)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
