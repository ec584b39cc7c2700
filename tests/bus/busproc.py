"""A bus service process for the fault tests (run as a script, killed for real).

Modes:

* ``consume URL SUBJECT GROUP EFFECTS_DB``: a queue-group member whose handler
  applies an idempotent effect (keyed on the message id) to a SQLite ledger,
  recording each start and finish so the test can see what was in flight when
  the process was killed. A payload ``b"poison"`` always fails.
* ``relay URL FROM TO``: republish every message from one subject to another
  (two of these make a cycle).

Each writes ``READY_FILE`` once subscribed and runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

from microhive.bus import Delivery, open_bus

LEDGER = """
CREATE TABLE IF NOT EXISTS attempts (msg_id TEXT, pid INTEGER, phase TEXT, at REAL);
CREATE TABLE IF NOT EXISTS applied (msg_id TEXT PRIMARY KEY, amount INTEGER, pid INTEGER);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER);
INSERT OR IGNORE INTO total VALUES (1, 0);
"""


def open_ledger(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(LEDGER)
    return db


async def consume(args: argparse.Namespace) -> None:
    db = open_ledger(args.effects)
    pid = os.getpid()
    loop = asyncio.get_running_loop()

    async def handle(msg: Delivery) -> None:
        db.execute("INSERT INTO attempts VALUES (?, ?, 'start', ?)", (msg.msg_id, pid, loop.time()))
        if msg.data == b"poison":
            raise RuntimeError("poison pill")
        await asyncio.sleep(args.work)  # the "work"; a SIGKILL lands in here
        amount = json.loads(msg.data)["amount"]
        db.execute("BEGIN IMMEDIATE")
        if db.execute(
            "INSERT OR IGNORE INTO applied VALUES (?, ?, ?)", (msg.msg_id, amount, pid)
        ).rowcount:
            db.execute("UPDATE total SET value = value + ? WHERE id = 1", (amount,))
        db.execute("COMMIT")
        db.execute("INSERT INTO attempts VALUES (?, ?, 'done', ?)", (msg.msg_id, pid, loop.time()))

    async with open_bus(args.url, max_deliveries=args.max_deliveries) as bus:
        await bus.subscribe(
            args.subject,
            handle,
            queue=args.group,
            start="beginning",
            ack_wait=args.ack_wait,
            concurrency=args.concurrency,
            backoff=(0.2, 0.3, 0.4),
        )
        await ready_and_wait(args.ready)


async def relay(args: argparse.Namespace) -> None:
    async with open_bus(args.url) as bus:

        async def forward(msg: Delivery) -> None:
            await bus.publish(args.to, msg.data)

        await bus.subscribe(args.source, forward, queue=f"relay-{args.source.replace('.', '-')}")
        await ready_and_wait(args.ready)


async def ready_and_wait(ready: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.to_thread(Path(ready).write_text, str(os.getpid()))
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("consume")
    c.add_argument("url")
    c.add_argument("subject")
    c.add_argument("group")
    c.add_argument("effects")
    c.add_argument("--ready", required=True)
    c.add_argument("--work", type=float, default=0.005)
    c.add_argument("--concurrency", type=int, default=8)
    c.add_argument("--ack-wait", type=float, default=1.0)
    c.add_argument("--max-deliveries", type=int, default=5)
    r = sub.add_parser("relay")
    r.add_argument("url")
    r.add_argument("source")
    r.add_argument("to")
    r.add_argument("--ready", required=True)
    args = parser.parse_args()
    asyncio.run(consume(args) if args.mode == "consume" else relay(args))


if __name__ == "__main__":
    main()
