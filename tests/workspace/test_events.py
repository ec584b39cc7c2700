"""file.* events reach the bus with the writer's trace, and survive a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microhive.bus import Delivery, open_bus
from microhive.context import CallContext
from microhive.workspace import Workspace

from .wshelp import eventually, settings

TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"


async def test_events_carry_the_writers_trace(tmp_path: Path) -> None:
    bus_url = f"embedded://{tmp_path / 'bus'}"
    got: list[tuple[str, dict[str, Any], str | None]] = []

    async def collect(msg: Delivery) -> None:
        got.append((msg.subject, msg.json(), msg.context.trace_id))

    async with open_bus(bus_url) as bus:
        await bus.subscribe("file.*", collect, start="all")
        async with Workspace(settings(tmp_path / "store", bus=bus_url)) as ws:
            ctx = CallContext.from_headers({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
            with ctx.activate():
                await ws.write("a.md", "first")
                await ws.write("a.md", "second")
                await ws.delete("a.md")
                await ws.write("b.md", "stays and gets indexed")

            async def all_four() -> bool:
                return {s for s, _, _ in got} >= {
                    "file.created",
                    "file.updated",
                    "file.deleted",
                    "file.indexed",
                }

            await eventually(all_four, what="created/updated/deleted/indexed events")
    created = next(e for e in got if e[0] == "file.created")
    assert created[1]["data"]["path"] == "a.md"
    assert created[1]["data"]["version"] == 1
    assert created[1]["id"].startswith("evt_")
    assert created[2] == TRACE
    assert all(trace == TRACE for s, _, trace in got if s != "file.indexed")


async def test_events_written_before_a_crash_are_published_after_restart(tmp_path: Path) -> None:
    bus_url = f"embedded://{tmp_path / 'bus'}"
    cfg = settings(tmp_path / "store", bus=bus_url)
    dead = Workspace(cfg)
    await dead.start(background=False)  # never publishes: stands for a crashed process
    await dead.write("x.md", "written, not yet published")
    await dead.aclose()
    got: list[str] = []

    async def collect(msg: Delivery) -> None:
        got.append(msg.json()["data"]["path"])

    async with open_bus(bus_url) as bus:
        await bus.subscribe("file.created", collect, start="all")
        async with Workspace(cfg):

            async def published() -> bool:
                return got == ["x.md"]

            await eventually(published, what="the pending event to be published")
