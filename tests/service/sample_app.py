"""Service factories the runtime tests start in real subprocesses.

Imported by ``serve_service`` through the ``app:`` entry of a mesh file written
by the tests (``PYTHONPATH`` points at this folder). Behaviour is driven by the
service's ``settings`` so one module covers every case.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from microhive.context import CallContext
from microhive.errors import NotFound, ServiceUnavailable
from microhive.service import Service, ServiceContext

log = logging.getLogger("sample")


def create(ctx: ServiceContext) -> Service:
    """A service with an echo, a slow handler, failing handlers and a file-driven ready check."""
    settings = ctx.spec.settings
    service = Service(ctx)

    @service.route("/echo", methods=["POST"])
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        return {"size": len(body)}

    @service.route("/ctx")
    async def context(request: Request) -> dict[str, Any]:
        current = CallContext.current()
        log.info("handled ctx", extra={"hops": current.hops})
        return {"hops": current.hops, "trace_id": current.trace_id}

    @service.route("/missing")
    async def missing(request: Request) -> None:
        raise NotFound("no such thing: widget 42")

    @service.route("/unavailable")
    async def unavailable(request: Request) -> None:
        raise ServiceUnavailable("the database is down")

    @service.route("/boom")
    async def boom(request: Request) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @service.route("/slow")
    async def slow(request: Request) -> dict[str, Any]:
        # Tells the test it is in flight, then works until the test releases it
        # (bounded, so a broken test cannot hang the process forever).
        folder = Path(settings["marker_dir"])
        (folder / "started").write_text("1")
        for _ in range(1500):
            if (folder / "release").exists():
                break
            await asyncio.sleep(0.02)
        return {"finished": True}

    @service.route("/forever")
    async def forever(request: Request) -> None:
        (Path(settings["marker_dir"]) / "started").write_text("1")
        await asyncio.Event().wait()

    if "ready_file" in settings:
        ready_file = Path(settings["ready_file"])

        async def flag() -> None:
            if not ready_file.exists():  # noqa: ASYNC240 - a tiny local file in a test
                raise ServiceUnavailable(f"{ready_file.name} is missing")

        service.add_ready_check("flag", flag)

    if "shutdown_file" in settings:
        shutdown_file = Path(settings["shutdown_file"])

        @service.on_shutdown
        async def note_shutdown() -> None:
            shutdown_file.write_text("shutdown hook ran")  # noqa: ASYNC240 - test marker

    return service


def create_failing_startup(ctx: ServiceContext) -> Service:
    """A service whose start-up hook fails (the process must exit 1, not serve)."""
    service = Service(ctx)

    @service.on_startup
    async def connect() -> None:
        raise ConnectionRefusedError("cannot reach the imaginary database")

    return service


def create_plain(ctx: ServiceContext) -> Any:
    """A plain ASGI app (with a lifespan), which the runtime must wrap."""
    state = {"started": False}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["started"] = True
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = f"plain {scope['path']} started={state['started']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app
