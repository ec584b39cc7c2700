"""The bus contract: every backend must pass this suite against its real server.

Subclass :class:`BusContract` and provide a ``url`` fixture that yields a bus URL
isolated for one test (and cleans up after it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar

import pytest

from microhive.bus import Bus, Delivery, Start, open_bus
from microhive.context import CallContext
from microhive.errors import DeadlineExceeded, InvalidInput, ServiceUnavailable
from tests.bus.bushelp import Collector, eventually

FAST = (0.05, 0.1, 0.2)


class BusContract:
    @pytest.fixture
    async def bus(self, url: str) -> AsyncIterator[Bus]:
        async with open_bus(url, dedup_window=60, max_deliveries=3) as bus:
            yield bus

    @pytest.fixture
    async def other(self, url: str) -> AsyncIterator[Bus]:
        """A second connection to the same bus (another process would do the same)."""
        async with open_bus(url, dedup_window=60, max_deliveries=3) as bus:
            yield bus

    # ------------------------------------------------------------ publishing

    async def test_publish_returns_increasing_sequences(self, bus: Bus) -> None:
        acks = [await bus.publish("orders.created", {"n": i}) for i in range(3)]
        assert [a.sequence for a in acks] == sorted({a.sequence for a in acks})
        assert not any(a.duplicate for a in acks)
        await bus.ping()

    async def test_payload_kinds_and_headers_round_trip(self, bus: Bus) -> None:
        got = Collector()
        await bus.subscribe("kinds.>", got)
        await bus.publish("kinds.bytes", b"\x00\xff", headers={"X-Custom": "yes"}, msg_id="b1")
        await bus.publish("kinds.text", "héllo")
        await bus.publish("kinds.json", {"a": [1, 2]})
        items = await got.wait(3)
        assert [i["data"] for i in items] == [b"\x00\xff", "héllo".encode(), b'{"a":[1,2]}']
        assert items[0]["headers"]["x-custom"] == "yes"
        assert items[0]["msg_id"] == "b1"
        assert items[2]["headers"]["content-type"] == "application/json"

    async def test_duplicate_msg_id_is_stored_once(self, bus: Bus) -> None:
        got = Collector()
        await bus.subscribe("dup.*", got, start="beginning")
        first = await bus.publish("dup.x", b"one", msg_id="same-id")
        again = await bus.publish("dup.x", b"two", msg_id="same-id")
        assert again.duplicate and again.sequence == first.sequence
        await bus.publish("dup.end", b"marker")
        await eventually(lambda: b"marker" in got.data(), what="marker")
        assert got.data() == [b"one", b"marker"]

    @pytest.mark.parametrize(
        ("subject", "payload", "headers", "msg_id"),
        [
            ("", b"x", None, None),
            ("a..b", b"x", None, None),
            ("a.*", b"x", None, None),
            ("a b", b"x", None, None),
            ("ok", object(), None, None),
            ("ok", float("nan"), None, None),
            ("ok", b"x", {"microhive-hops": "many"}, None),
            ("ok", b"x", {"x-bad": "line\nbreak"}, None),
            ("ok", b"x", {"bad name": "v"}, None),
            ("ok", b"x", None, "has space"),
            ("ok", b"x" * (1024 * 1024 + 1), None, None),
        ],
    )
    async def test_malformed_publish_is_refused_clearly(
        self,
        bus: Bus,
        subject: str,
        payload: object,
        headers: dict[str, str] | None,
        msg_id: str | None,
    ) -> None:
        with pytest.raises(InvalidInput) as err:
            await bus.publish(subject, payload, headers=headers, msg_id=msg_id)
        assert err.value.message

    # ----------------------------------------------------------- subscribing

    async def test_fan_out_gives_every_subscriber_every_message(self, bus: Bus) -> None:
        subs = [Collector() for _ in range(3)]
        for c in subs:
            await bus.subscribe("file.created", c)
        for i in range(5):
            await bus.publish("file.created", {"i": i})
        for c in subs:
            items = await c.wait(5)
            assert [json.loads(i["data"])["i"] for i in items] == [0, 1, 2, 3, 4]

    async def test_queue_group_gives_each_message_to_one_member(self, bus: Bus, other: Bus) -> None:
        a, b = Collector(), Collector()
        await bus.subscribe("work.*", a, queue="workers", start="beginning")
        await other.subscribe("work.*", b, queue="workers", start="beginning")
        for i in range(40):
            await bus.publish("work.item", {"i": i}, msg_id=f"w{i}")
        await eventually(lambda: len(a.items) + len(b.items) >= 40, what="40 deliveries")
        await bus.publish("work.end", b"end", msg_id="end")
        await eventually(lambda: "end" in a.ids() + b.ids(), what="marker")
        ids = a.ids() + b.ids()
        assert sorted(ids) == sorted([*(f"w{i}" for i in range(40)), "end"])

    async def test_wildcards(self, bus: Bus) -> None:
        star, tail = Collector(), Collector()
        await bus.subscribe("a.*", star)
        await bus.subscribe("a.>", tail)
        for subject in ("a.b", "a.b.c", "x.b", "a"):
            await bus.publish(subject, subject)
        await bus.publish("a.end", "end")
        await tail.wait(3)
        await star.wait(2)
        assert star.data() == [b"a.b", b"end"]
        assert tail.data() == [b"a.b", b"a.b.c", b"end"]

    async def test_start_positions(self, bus: Bus) -> None:
        acks = [await bus.publish("start.x", str(i)) for i in range(4)]
        midpoint = time.time()
        await eventually(lambda: time.time() > midpoint + 0.01)
        later = await bus.publish("start.x", "4")
        begin, seq, at_time, new = Collector(), Collector(), Collector(), Collector()
        await bus.subscribe("start.x", begin, start=Start.beginning())
        await bus.subscribe("start.x", seq, start=Start.at_sequence(acks[2].sequence))
        await bus.subscribe("start.x", at_time, start=Start.at_time(midpoint))
        await bus.subscribe("start.x", new, start="new")
        await bus.publish("start.x", "5")
        await begin.wait(6)
        await seq.wait(4)
        await at_time.wait(2)
        await new.wait(1)
        assert begin.data() == [b"0", b"1", b"2", b"3", b"4", b"5"]
        assert seq.data() == [b"2", b"3", b"4", b"5"]
        assert at_time.data() == [b"4", b"5"]
        assert new.data() == [b"5"]
        assert later.sequence > acks[-1].sequence

    async def test_queue_group_keeps_its_place(self, bus: Bus, other: Bus) -> None:
        first = Collector()
        sub = await bus.subscribe("place.x", first, queue="keeper", start="beginning")
        for i in range(3):
            await bus.publish("place.x", str(i))
        await first.wait(3)
        await sub.aclose()
        for i in range(3, 5):
            await bus.publish("place.x", str(i))
        second = Collector()
        await other.subscribe("place.x", second, queue="keeper", start="beginning")
        await second.wait(2)
        await other.publish("place.x", "end")
        await second.wait(3)
        assert second.data() == [b"3", b"4", b"end"]

    async def test_queue_group_pattern_conflict_is_refused(self, bus: Bus) -> None:
        await bus.subscribe("one.*", Collector(), queue="g1")
        with pytest.raises(InvalidInput, match="already subscribes"):
            await bus.subscribe("two.*", Collector(), queue="g1")

    async def test_concurrency_runs_handlers_in_parallel(self, bus: Bus) -> None:
        running, peak = 0, 0
        release = asyncio.Event()

        async def slow(msg: Delivery) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

        await bus.subscribe("par.x", slow, concurrency=4)
        for i in range(4):
            await bus.publish("par.x", str(i))
        await eventually(lambda: peak == 4, what="4 handlers at once")
        release.set()

    # ------------------------------------------------- failures and retries

    async def test_failed_handler_is_retried_with_backoff(self, bus: Bus) -> None:
        async def flaky(msg: Delivery) -> None:
            if msg.deliveries < 3:
                raise RuntimeError("not yet")

        got = Collector(flaky)
        sub = await bus.subscribe("retry.x", got, backoff=FAST, max_deliveries=5, ack_wait=5)
        await bus.publish("retry.x", b"job")
        await eventually(lambda: sub.acked == 1, what="ack after retries")
        assert [i["deliveries"] for i in got.items] == [1, 2, 3]
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(got.items)]
        assert gaps[0] >= FAST[0] * 0.9 and gaps[1] >= FAST[1] * 0.9, gaps

    async def test_poison_message_is_dead_lettered_with_history(self, bus: Bus) -> None:
        async def poison(msg: Delivery) -> None:
            raise ValueError(f"cannot handle attempt {msg.deliveries}")

        attempts = Collector(poison)
        dead = Collector()
        await bus.subscribe("dlq.>", dead)
        await bus.subscribe("poison.x", attempts, max_deliveries=3, backoff=FAST, ack_wait=5)
        await bus.publish("poison.x", b"bad", msg_id="p1")
        item = (await dead.wait(1))[0]
        assert [a["deliveries"] for a in attempts.items] == [1, 2, 3]
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(attempts.items)]
        assert all(g >= d * 0.9 for g, d in zip(gaps, FAST, strict=False)), gaps  # no hot loop
        h = item["headers"]
        assert item["subject"] == "dlq.poison.x" and item["data"] == b"bad"
        assert "max deliveries (3)" in h["microhive-dlq-reason"]
        assert "cannot handle attempt 3" in h["microhive-dlq-reason"]
        assert h["microhive-dlq-msg-id"] == "p1" and h["microhive-dlq-deliveries"] == "3"
        assert [e["attempt"] for e in json.loads(h["microhive-dlq-history"])] == [1, 2, 3]

    async def test_term_and_invalid_input_dead_letter_at_once(self, bus: Bus) -> None:
        async def judge(msg: Delivery) -> None:
            if msg.data == b"term":
                await msg.term("not for us")
            else:
                msg.json()  # raises InvalidInput: not JSON

        dead = Collector()
        await bus.subscribe("dlq.judge.>", dead)
        sub = await bus.subscribe("judge.*", Collector(judge))
        await bus.publish("judge.a", b"term")
        await bus.publish("judge.b", b"{not json")
        items = await dead.wait(2)
        reasons = sorted(i["headers"]["microhive-dlq-reason"] for i in items)
        assert reasons[0].startswith("invalid_input") and "not valid JSON" in reasons[0]
        assert reasons[1] == "not for us"
        assert sub.received == 2 and all(
            i["headers"]["microhive-dlq-deliveries"] == "1" for i in items
        )

    async def test_malformed_message_on_receive_is_dead_lettered_and_consumer_goes_on(
        self, bus: Bus
    ) -> None:
        got, dead = Collector(), Collector()
        await bus.subscribe("dlq.>", dead)
        await bus.subscribe("in.*", got)
        await bus.publish("in.x", b"{broken", headers={"content-type": "application/json"})
        await bus._store("in.x", b"ok?", {"microhive-hops": "lots", "microhive-msg-id": "m"}, "m")
        await bus.publish("in.x", {"fine": True})
        await got.wait(1)
        items = await dead.wait(2)
        reasons = sorted(i["headers"]["microhive-dlq-reason"] for i in items)
        assert reasons[0].startswith("malformed headers: microhive-hops")
        assert reasons[1].startswith("malformed payload: invalid JSON")
        assert got.data() == [b'{"fine":true}']

    async def test_in_progress_keeps_the_message(self, bus: Bus) -> None:
        async def long(msg: Delivery) -> None:
            for _ in range(6):
                await msg.in_progress()
                await asyncio.sleep(0.1)  # the work itself, not synchronisation

        got = Collector(long)
        sub = await bus.subscribe("long.x", got, ack_wait=0.4, concurrency=2)
        await bus.publish("long.x", b"job")
        await eventually(lambda: sub.acked == 1, what="ack")
        assert len(got.items) == 1

    # --------------------------------------------------------- call context

    async def test_context_travels_and_hops_decrease(self, bus: Bus) -> None:
        async def forward(msg: Delivery) -> None:
            await bus.publish("ctx.second", msg.data)

        first, second = Collector(forward), Collector()
        await bus.subscribe("ctx.first", first)
        await bus.subscribe("ctx.second", second)
        ctx = CallContext.from_headers(
            {
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "microhive-hops": "5",
                "microhive-max-hops": "5",
            }
        )
        with ctx.activate():
            await bus.publish("ctx.first", b"go")
        item = (await second.wait(1))[0]
        assert first.items[0]["hops"] == 4 and item["hops"] == 3
        assert item["trace_id"] == first.items[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"

    async def test_message_without_hops_is_dead_lettered_with_its_trace(self, bus: Bus) -> None:
        got, dead = Collector(), Collector()
        await bus.subscribe("dlq.>", dead)
        await bus.subscribe("hop.x", got)
        tp = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        await bus.publish("hop.x", b"loop", headers={"traceparent": tp, "microhive-hops": "0"})
        await bus.publish("hop.x", b"fine")
        item = (await dead.wait(1))[0]
        await got.wait(1)
        assert got.data() == [b"fine"]
        assert item["headers"]["microhive-dlq-reason"].startswith("hop limit")
        assert item["headers"]["microhive-dlq-code"] == "hop_limit"
        assert item["headers"]["traceparent"] == tp

    async def test_cycle_stops_at_the_hop_limit(self, bus: Bus) -> None:
        async def ping(msg: Delivery) -> None:
            await bus.publish("cycle.b", msg.data)

        async def pong(msg: Delivery) -> None:
            await bus.publish("cycle.a", msg.data)

        a, b, dead = Collector(ping), Collector(pong), Collector()
        await bus.subscribe("cycle.a", a)
        await bus.subscribe("cycle.b", b)
        await bus.subscribe("dlq.cycle.*", dead)
        tp = "00-2af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ctx = CallContext.from_headers(
            {"traceparent": tp, "microhive-hops": "6", "microhive-max-hops": "6"}
        )
        with ctx.activate():
            await bus.publish("cycle.a", b"ball")
        item = (await dead.wait(1))[0]
        assert [i["hops"] for i in a.items] == [5, 3, 1]
        assert [i["hops"] for i in b.items] == [4, 2]
        assert item["subject"] == "dlq.cycle.b"
        assert item["headers"]["microhive-dlq-code"] == "hop_limit"
        assert CallContext.from_headers(item["headers"]).trace_id == ctx.trace_id

    async def test_each_publish_carries_its_own_context(self, bus: Bus) -> None:
        got = Collector()
        await bus.subscribe("own.x", got)
        a = CallContext.from_headers(
            {"traceparent": f"00-{'a' * 32}-b7ad6b7169203331-01", "microhive-hops": "5"}
        )
        b = CallContext.from_headers(
            {"traceparent": f"00-{'b' * 32}-b7ad6b7169203331-01", "microhive-hops": "9"}
        )
        for ctx in (a, b, None, a, a, b):
            if ctx is None:
                await bus.publish("own.x", b"none")
            else:
                with ctx.activate():
                    await bus.publish("own.x", b"ctx")
        items = await got.wait(6)
        assert [i["hops"] for i in items] == [4, 8, 15, 4, 4, 8]
        traces = [i["trace_id"] for i in items]
        assert traces[:2] + traces[3:] == ["a" * 32, "b" * 32, "a" * 32, "a" * 32, "b" * 32]
        assert traces[2] not in ("a" * 32, "b" * 32)

    async def test_a_deadline_is_checked_on_every_publish(self, bus: Bus) -> None:
        deadline = time.time() + 0.3
        ctx = CallContext.new(deadline=deadline)
        with ctx.activate():
            await bus.publish("late.x", b"in time")
            await eventually(lambda: time.time() > deadline, what="the deadline to pass")
            with pytest.raises(DeadlineExceeded):
                await bus.publish("late.x", b"too late")

    async def test_a_handler_changes_no_other_handlers_context(self, bus: Bus) -> None:
        marker: ContextVar[bytes | None] = ContextVar("marker", default=None)
        seen: list[tuple[bytes | None, int]] = []

        async def meddle(msg: Delivery) -> None:
            seen.append((marker.get(), CallContext.current().hops))
            marker.set(msg.data)  # never reset, on purpose

        sub = await bus.subscribe("meddle.x", meddle)
        for i in range(4):
            await bus.publish("meddle.x", str(i))
        await eventually(lambda: sub.acked == 4, what="four handled")
        assert seen == [(None, 15)] * 4

    async def test_many_distinct_contexts_each_reach_their_handler(self, bus: Bus) -> None:
        got = Collector()
        await bus.subscribe("many.x", got, concurrency=16)
        traces = [f"{i:032x}" for i in range(1, 301)]
        for i, trace_id in enumerate(traces):
            tp = f"00-{trace_id}-b7ad6b7169203331-01"
            hops = str(2 + i % 7)
            await bus.publish("many.x", hops, headers={"traceparent": tp, "microhive-hops": hops})
        items = await got.wait(300)
        assert sorted(i["trace_id"] for i in items) == traces
        assert all(i["hops"] == int(i["data"]) for i in items)

    async def test_closing_cancels_a_handler_past_the_grace_and_frees_its_slot(
        self, bus: Bus
    ) -> None:
        started = asyncio.Event()

        async def forever(msg: Delivery) -> None:
            started.set()
            await asyncio.Event().wait()

        sub = await bus.subscribe("stuck.x", forever, concurrency=2)
        await bus.publish("stuck.x", b"job")
        await asyncio.wait_for(started.wait(), 10)
        assert sub.in_flight == 1
        await sub.aclose(grace=0.1)
        assert sub.in_flight == 0 and sub.acked == 0

    async def test_closed_bus_refuses_work(self, url: str) -> None:
        bus = open_bus(url)
        async with bus:
            await bus.publish("closing.x", b"1")
        with pytest.raises(ServiceUnavailable):
            await bus.publish("closing.x", b"2")
