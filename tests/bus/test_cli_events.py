"""``microhive events``: publish, tail, list and replay dead letters (embedded bus)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from microhive.bus import Delivery, open_bus
from microhive.cli.events import app
from tests.bus.bushelp import Collector

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_publish_then_tail_from_the_beginning(tmp_path: Path) -> None:
    bus = f"embedded://{tmp_path}/bus"
    tp = "traceparent=00-5af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    code, output = invoke(
        "publish",
        "file.created",
        '{"path": "a.md"}',
        "--id",
        "e1",
        "--bus",
        bus,
        "-H",
        tp,
        "--json",
    )
    assert code == 0, output
    assert json.loads(output) == {"subject": "file.created", "sequence": 1, "msg_id": "e1",
                                  "duplicate": False}  # fmt: skip
    code, output = invoke("publish", "file.created", "again", "--id", "e1", "--bus", bus)
    assert code == 0 and "duplicate" in output
    code, output = invoke(
        "tail", "file.*", "--from", "beginning", "-n", "1", "--bus", bus, "--json"
    )
    assert code == 0, output
    item = json.loads(output)
    assert item["payload"] == {"path": "a.md"}
    assert item["trace_id"] == "5af7651916cd43dd8448eb211c80319c"


def test_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    bus = f"embedded://{tmp_path}/bus"
    code, output = invoke("publish", "bad subject", "x", "--bus", bus)
    assert code == 2 and "subject" in output
    code, output = invoke("publish", "ok", "x", "-H", "novalue", "--bus", bus)
    assert code == 2 and "NAME=VALUE" in output
    code, output = invoke("tail", "x", "--from", "yesterday", "--bus", bus)
    assert code == 2
    code, output = invoke("publish", "ok", "x", "--bus", "kafka://nowhere")
    assert code == 2 and "expected one of" in output


def test_dead_letters_are_listed_and_replayed(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/bus"

    async def make_dead_letter() -> None:
        async def reject(msg: Delivery) -> None:
            raise ValueError("no thanks")

        async with open_bus(url) as bus:
            dead = Collector()
            await bus.subscribe("dlq.>", dead)
            await bus.subscribe(
                "orders.new", reject, queue="shop", max_deliveries=2, backoff=[0.01]
            )
            await bus.publish("orders.new", {"order": 7}, msg_id="order-7")
            await dead.wait(1)

    asyncio.run(make_dead_letter())
    code, output = invoke("dlq", "--bus", url, "--json")
    assert code == 0, output
    (row,) = json.loads(output)
    assert row["subject"] == "orders.new" and row["msg_id"] == "order-7"
    assert row["deliveries"] == "2" and "no thanks" in row["reason"]
    assert [h["attempt"] for h in row["history"]] == [1, 2]
    code, output = invoke("dlq", "--bus", url)
    assert code == 0 and "order-7" in output
    code, output = invoke("dlq", "--bus", url, "--replay", "missing")
    assert code == 2

    async def replayed() -> list[bytes]:
        async with open_bus(url) as bus:
            got = Collector()
            await bus.subscribe("orders.new", got, start="beginning")
            code, output = await asyncio.to_thread(
                invoke, "dlq", "--bus", url, "--replay", "order-7"
            )
            assert code == 0, output
            await got.wait(2)
            assert got.items[1]["hops"] == 15  # a fresh hop budget
            assert got.items[1]["msg_id"].startswith("order-7:replay:")
            return got.data()

    assert asyncio.run(replayed()) == [b'{"order":7}', b'{"order":7}']
