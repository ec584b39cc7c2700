"""``microhive events``: watch, publish and repair the event bus.

* ``events tail SUBJECT`` -- print messages live as they arrive (headers, trace id);
* ``events publish SUBJECT [DATA]`` -- publish one message (DATA as JSON if it
  parses, else text) and print the acknowledgement;
* ``events dlq`` -- list dead letters with their reasons; ``--replay ID``
  re-publishes one (by its original message id or dead-letter sequence) to its
  original subject with a fresh hop budget and the same trace.

The bus is ``--bus URL``, else the mesh file's ``bus.url`` (a relative
``embedded://`` path is taken from the mesh file's folder), else the default
``embedded://.microhive/bus``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from microhive.bus import DLQ_PREFIX, Bus, Delivery, open_bus
from microhive.cli._common import (
    EXIT_USAGE,
    FileOption,
    JsonOption,
    fail,
    handle_errors,
    load_mesh,
    out,
)
from microhive.config.loader import DEFAULT_FILE
from microhive.context import HEADER_HOPS, HEADER_MAX_HOPS, CallContext

__all__ = ["app"]

app = typer.Typer(help="Watch, publish and repair bus events.", no_args_is_help=True)

BusOption = Annotated[
    str | None,
    typer.Option("--bus", help="Bus URL (default: the mesh file's bus).", show_default=False),
]
_DLQ_HEADER = "microhive-dlq-"


def _bus(file: Path | None, url: str | None) -> Bus:
    """The bus named by ``--bus``, else by the mesh file, else the embedded default."""
    import os

    if url is not None:
        with handle_errors():
            return open_bus(url)
    if file is None and not os.environ.get("MICROHIVE_CONFIG") and not Path(DEFAULT_FILE).is_file():
        return open_bus("embedded://.microhive/bus")
    mesh, path = load_mesh(file)
    bus_url = mesh.bus.url
    if bus_url.startswith("embedded://"):
        rest = bus_url.removeprefix("embedded://")
        if rest and not rest.startswith("/"):
            bus_url = f"embedded://{(path.parent / rest).resolve()}"
    with handle_errors():
        return open_bus(
            bus_url, dedup_window=mesh.bus.dedup_window, max_deliveries=mesh.bus.max_deliveries
        )


def _describe(msg: Delivery) -> dict[str, Any]:
    try:
        payload: Any = msg.json()
    except Exception:
        payload = msg.data.decode("utf-8", errors="replace")
    return {
        "subject": msg.subject,
        "sequence": msg.sequence,
        "msg_id": msg.msg_id,
        "published_at": msg.published_at,
        "trace_id": msg.context.trace_id,
        "hops": msg.context.hops,
        "headers": dict(msg.headers),
        "payload": payload,
    }


async def _run(coro: Any) -> Any:
    with handle_errors():
        return await coro


@app.command("tail")
def tail(
    subject: Annotated[str, typer.Argument(help="Subject or pattern (* one token, > the rest).")],
    start: Annotated[str, typer.Option("--from", help="'new' (default) or 'beginning'.")] = "new",
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Stop after N messages.")
    ] = None,
    as_json: JsonOption = False,
    file: FileOption = None,
    bus_url: BusOption = None,
) -> None:
    """Print messages live as they arrive, with their headers and trace id (Ctrl-C stops)."""
    if start not in ("new", "beginning"):
        fail(f"--from: expected 'new' or 'beginning', got {start!r}", EXIT_USAGE)
    bus = _bus(file, bus_url)

    async def main() -> None:
        seen = 0
        done = asyncio.Event()

        async def show(msg: Delivery) -> None:
            nonlocal seen
            item = _describe(msg)
            if as_json:
                out.out(json.dumps(item, sort_keys=True, default=str), highlight=False)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(msg.published_at))
                out.print(
                    f"[bold]{escape(msg.subject)}[/] #{msg.sequence} {stamp} "
                    f"id={escape(msg.msg_id)} trace={item['trace_id'] or '-'} hops={item['hops']}"
                )
                for key, value in sorted(msg.headers.items()):
                    out.print(f"  [dim]{escape(key)}: {escape(value)}[/]")
                body = item["payload"]
                text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
                out.print(f"  {escape(text[:2000])}")
            seen += 1
            if count is not None and seen >= count:
                done.set()

        async with bus:
            await bus.subscribe(subject, show, start=start)
            await done.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(main()))


@app.command("publish")
def publish(
    subject: Annotated[str, typer.Argument(help="The subject, e.g. file.created.")],
    data: Annotated[str, typer.Argument(help="The payload: JSON if it parses, else text.")] = "",
    text: Annotated[
        bool, typer.Option("--text", help="Send DATA as text even if it is JSON.")
    ] = False,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="A header NAME=VALUE (repeatable).")
    ] = None,
    msg_id: Annotated[
        str | None, typer.Option("--id", help="Message id (dedup key); default: random.")
    ] = None,
    as_json: JsonOption = False,
    file: FileOption = None,
    bus_url: BusOption = None,
) -> None:
    """Publish one message and print its acknowledgement (sequence, duplicate)."""
    headers: dict[str, str] = {}
    for item in header or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--header: expected NAME=VALUE, got {item!r}", EXIT_USAGE)
        headers[name.strip()] = value
    payload: object = data
    if not text and data:
        with contextlib.suppress(ValueError):
            payload = json.loads(data)
    bus = _bus(file, bus_url)

    async def main() -> Any:
        async with bus:
            return await bus.publish(subject, payload, headers=headers or None, msg_id=msg_id)

    ack = asyncio.run(_run(main()))
    result = {"subject": ack.subject, "sequence": ack.sequence, "msg_id": ack.msg_id,
              "duplicate": ack.duplicate}  # fmt: skip
    if as_json:
        out.out(json.dumps(result, sort_keys=True), highlight=False)
    else:
        note = " (duplicate: already stored)" if ack.duplicate else ""
        out.print(f"published {escape(ack.subject)} #{ack.sequence} id={escape(ack.msg_id)}{note}")


async def _dead_letters(bus: Bus, idle: float) -> list[Delivery]:
    """Every dead letter on the bus, read from the beginning until none came for ``idle`` s."""
    found: list[Delivery] = []
    arrived = asyncio.Event()

    async def keep(msg: Delivery) -> None:
        found.append(msg)
        arrived.set()

    sub = await bus.subscribe(DLQ_PREFIX + ">", keep, start="beginning", concurrency=64)
    while True:
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), idle)
        except TimeoutError:
            break
    await sub.aclose()
    return found


@app.command("dlq")
def dlq(
    replay: Annotated[
        str | None,
        typer.Option(
            "--replay", help="Re-publish the dead letter with this message id or sequence."
        ),
    ] = None,
    as_json: JsonOption = False,
    idle: Annotated[
        float, typer.Option("--idle", min=0.1, help="Stop reading after this many quiet seconds.")
    ] = 0.5,
    file: FileOption = None,
    bus_url: BusOption = None,
) -> None:
    """List dead letters (why, how often delivered, trace), or replay one with --replay."""
    bus = _bus(file, bus_url)

    async def main() -> Any:
        async with bus:
            letters = await _dead_letters(bus, idle)
            if replay is None:
                return letters, None
            match = [
                m for m in letters
                if replay in (m.headers.get(_DLQ_HEADER + "msg-id"), str(m.sequence), m.msg_id)
            ]  # fmt: skip
            if not match:
                return letters, False
            letter = match[-1]
            original = letter.headers.get(_DLQ_HEADER + "subject") or letter.subject.removeprefix(
                DLQ_PREFIX
            )
            headers = {k: v for k, v in letter.headers.items() if not k.startswith(_DLQ_HEADER)}
            headers.pop("microhive-msg-id", None)
            fresh = CallContext.new().next_hop()  # a replay is a new publish: a full hop budget
            headers[HEADER_HOPS] = str(fresh.hops)
            headers[HEADER_MAX_HOPS] = str(fresh.max_hops)
            orig_id = letter.headers.get(_DLQ_HEADER + "msg-id", letter.msg_id)
            ack = await bus.publish(
                original, letter.data, headers=headers,
                msg_id=f"{orig_id}:replay:{letter.sequence}"[:256],
            )  # fmt: skip
            return letters, ack

    letters, ack = asyncio.run(_run(main()))
    if replay is not None:
        if ack is False:
            fail(f"no dead letter with message id or sequence {replay!r}", EXIT_USAGE)
        out.print(f"replayed to {escape(ack.subject)} #{ack.sequence} id={escape(ack.msg_id)}")
        return
    rows = [_letter_row(m) for m in letters]
    if as_json:
        out.out(json.dumps(rows, indent=2, sort_keys=True, default=str), highlight=False)
        return
    if not rows:
        out.print("no dead letters")
        return
    table = Table("seq", "subject", "msg id", "deliveries", "reason", "trace id")
    for r in rows:
        table.add_row(str(r["sequence"]), escape(r["subject"]), escape(r["msg_id"]),
                      r["deliveries"], escape(r["reason"]), r["trace_id"] or "-")  # fmt: skip
    out.print(table)


def _letter_row(msg: Delivery) -> dict[str, Any]:
    h = msg.headers
    history: Any = []
    with contextlib.suppress(ValueError):
        history = json.loads(h.get(_DLQ_HEADER + "history", "[]"))
    return {
        "sequence": msg.sequence,
        "subject": h.get(_DLQ_HEADER + "subject", msg.subject),
        "msg_id": h.get(_DLQ_HEADER + "msg-id", msg.msg_id),
        "consumer": h.get(_DLQ_HEADER + "consumer", ""),
        "deliveries": h.get(_DLQ_HEADER + "deliveries", ""),
        "reason": h.get(_DLQ_HEADER + "reason", ""),
        "code": h.get(_DLQ_HEADER + "code", ""),
        "trace_id": msg.context.trace_id,
        "history": history,
    }
