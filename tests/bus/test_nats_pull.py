"""The NATS backend's own pull loop and ack-subject parsing, against the real server.

The contract suite covers what every backend does; these check what only the
NATS feed decides: how much it asks JetStream for, how a pull request ends, how
a failure status surfaces, and that the delivery facts read from the ack subject
are the ones nats-py's own parser gives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from microhive.bus import Bus, Delivery, open_bus
from tests.bus.bushelp import Collector, eventually

pytestmark = pytest.mark.services


@pytest.fixture
async def bus(nats_bus_url: str) -> AsyncIterator[Bus]:
    async with open_bus(nats_bus_url, max_deliveries=3) as bus:
        yield bus


@pytest.fixture
async def other(nats_bus_url: str) -> AsyncIterator[Bus]:
    async with open_bus(nats_bus_url, max_deliveries=3) as bus:
        yield bus


async def test_a_busy_member_asks_for_no_more_than_its_free_slots(bus: Bus, other: Bus) -> None:
    release = asyncio.Event()
    busy: list[bytes] = []

    async def stuck(msg: Delivery) -> None:
        busy.append(msg.data)
        await release.wait()

    sub = await bus.subscribe("work.x", stuck, queue="crew", concurrency=2, start="beginning")
    for i in range(2):
        await bus.publish("work.x", str(i))
    await eventually(lambda: len(busy) == 2, what="both slots taken")
    free = Collector()
    sub2 = await other.subscribe("work.x", free, queue="crew", concurrency=8)
    for i in range(2, 12):
        await bus.publish("work.x", str(i))
    # The saturated member holds nothing beyond its two handlers, so the other
    # member gets all ten at once (not after an ack wait of 30 s).
    await eventually(lambda: sub2.acked == 10, within=5, what="ten acked by the free member")
    assert sub.in_flight == 2 and len(busy) == 2
    assert (await sub.pending())[1] == 2  # unacked on the server: just the two running
    release.set()
    await eventually(lambda: sub.acked == 2 and sub.in_flight == 0, what="the two acked")


async def test_an_idle_feed_asks_again_after_its_request_expires(bus: Bus) -> None:
    got = Collector()
    sub = await bus.subscribe("idle.x", got, queue="idlers")
    feed: Any = sub._feed
    first = feed._pulls
    await eventually(lambda: feed._pulls > first, within=5, what="a second pull request")
    await bus.publish("idle.x", b"late")
    await got.wait(1, within=3)
    assert got.data() == [b"late"]


async def test_a_failure_status_is_logged_and_retried(
    bus: Bus, other: Bus, nats_bus_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import nats
    from nats.js import api

    stream = nats_bus_url.rsplit("namespace=", 1)[1].upper()
    nc = await nats.connect(nats_bus_url.split("?", 1)[0])
    try:  # a group made elsewhere that takes one waiting pull request at a time
        await nc.jetstream().add_consumer(
            stream,
            api.ConsumerConfig(
                durable_name="narrow",
                ack_policy=api.AckPolicy.EXPLICIT,
                filter_subject=f"{stream.lower()}.narrow.x",
                max_waiting=1,
            ),
        )
    finally:
        await nc.close()
    caplog.set_level(logging.WARNING, logger="microhive.bus")
    got = Collector()
    await bus.subscribe("narrow.x", got, queue="narrow")
    await other.subscribe("narrow.x", got, queue="narrow")  # its request exceeds MaxWaiting
    await eventually(
        lambda: any("status 409" in r.getMessage() for r in caplog.records),
        within=5,
        what="the 409 logged",
    )
    for i in range(5):  # and the group still works: the refused member keeps retrying
        await bus.publish("narrow.x", str(i))
    await got.wait(5)


async def test_delivery_facts_match_nats_py_metadata(bus: Bus) -> None:
    from nats.aio.msg import Msg

    from microhive.bus.nats import _delivery_of

    seen: list[tuple[tuple[int, int, float], Any]] = []

    async def fail_once(msg: Delivery) -> None:
        raw: Msg = msg._receipt._msg  # type: ignore[attr-defined]
        seen.append(((msg.sequence, msg.deliveries, msg.published_at), raw.metadata))
        if msg.deliveries == 1:
            raise RuntimeError("again")

    await bus.subscribe("facts.x", fail_once, backoff=[0.05], ack_wait=5)
    ack = await bus.publish("facts.x", b"one")
    await eventually(lambda: len(seen) == 2, what="a delivery and its redelivery")
    for (sequence, deliveries, published_at), meta in seen:
        assert sequence == meta.sequence.stream == ack.sequence
        assert deliveries == meta.num_delivered
        assert published_at == pytest.approx(meta.timestamp.timestamp(), abs=1e-6)
    assert [facts[1] for facts, _ in seen] == [1, 2]
    # A reply subject in the form with a JetStream domain goes through nats-py's parser.
    domain = "$JS.ACK.hub.ACCHASH.ORDERS.workers.3.41.40.1763979000123456789.0.tok"
    msg = Msg(None, subject="orders.x", reply=domain, data=b"")  # type: ignore[arg-type]
    assert _delivery_of(msg) == (41, 3, msg.metadata.timestamp.timestamp())
