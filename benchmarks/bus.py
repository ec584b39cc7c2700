"""Bus benchmark: publish-and-consume with acks, per backend, against the raw clients.

Usage::

    .venv/bin/python benchmarks/bus.py [--quick] [--json] [--only nats,redis]
        [--nats nats://127.0.0.1:4222] [--redis redis://127.0.0.1:6379/0]

What is measured, per backend:

* throughput: N messages published with up to ``WINDOW`` publishes in flight,
  consumed by a queue group with ``WINDOW`` concurrent handlers, each acked;
  messages/s from the first publish to the last handler call;
* latency: publish-to-handler time of messages published at a steady pace
  (one every 2 ms, so the figure is not queueing delay), p50 and p99.

``embedded`` runs its consumer in a second process (the target is about two
processes sharing the bus). For NATS and Redis the same work is done with the raw
client (nats-py JetStream pull consumer + ack; redis-py XADD/XREADGROUP/XACK) in
the same run: one warm-up round each (not counted), then rounds alternating
which side goes first (ABBA, so drift and other load hit both alike); each
figure is the median over the rounds (5, 3 with ``--quick``) and the ratio is
microhive/raw. ``cpu_per_msg`` is this process's CPU time per message (publish
and consume both run here), the cost of each side with other load on the
machine mostly taken out. Fan-out: one event to three
subscriber processes on the embedded bus, latency until the third has it.
Targets: embedded >= 5,000 msg/s and p50 <= 5 ms; fan-out p50 <= 10 ms;
NATS and Redis >= 0.8x the raw client.

By default no tracer provider is installed (tracing off, as in a process that
never set one up). ``--tracing`` installs one in every benchmark process,
exporting to a throwaway trace store as ``microhive serve`` does, so each
publish and delivery is a span; metric names then end in ``.traced``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from microhive.bus import Delivery, open_bus

WINDOW = 64
PACE = 0.002

Publish = Callable[[int, bytes], Awaitable[None]]


def payload() -> bytes:
    return f"{time.time()!r}".encode().ljust(128, b" ")


def sent_at(data: bytes) -> float:
    return float(data[:32].strip())


class Sink:
    """Counts handled messages and records their publish-to-handler latency."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.last = 0.0
        self.event = asyncio.Event()
        self.target = 0

    def hit(self, data: bytes) -> None:
        now = time.time()
        self.latencies.append(now - sent_at(data))
        self.count += 1
        self.last = now
        if self.count >= self.target:
            self.event.set()

    async def expect(self, n: int, within: float = 120.0) -> None:
        self.target = self.count + n
        self.event.clear()
        if self.count < self.target:
            await asyncio.wait_for(self.event.wait(), within)


async def drive(publish: Publish, sink: Sink, n: int) -> dict[str, float]:
    """Throughput phase then paced latency phase; returns the figures."""
    cpu = time.process_time()
    sem = asyncio.Semaphore(WINDOW)

    async def one(i: int) -> None:
        try:
            await publish(i, payload())
        finally:
            sem.release()

    waiter = asyncio.create_task(sink.expect(n))
    start = time.time()
    tasks = []
    for i in range(n):
        await sem.acquire()
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    await waiter
    rate = n / (sink.last - start)
    sink.latencies.clear()
    paced = max(n // 10, 200)
    waiter = asyncio.create_task(sink.expect(paced))
    for i in range(paced):
        await publish(n + i, payload())
        await asyncio.sleep(PACE)
    await waiter
    cpu_us = (time.process_time() - cpu) / (n + paced) * 1e6
    lat = sorted(sink.latencies)
    return {"rate": rate, "p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000, "cpu": cpu_us}


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def pct(values: list[float], p: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else 0.0
    )


# ------------------------------------------------------------------ microhive


async def microhive_inprocess(url: str, n: int) -> dict[str, float]:
    sink = Sink()
    async with open_bus(url) as pub:
        sub = pub  # one client for both sides, as the raw baselines do

        async def handle(msg: Delivery) -> None:
            sink.hit(msg.data)

        await sub.subscribe("bench.msg", handle, queue="bench", concurrency=WINDOW)

        async def publish(i: int, data: bytes) -> None:
            await pub.publish("bench.msg", data, msg_id=f"m{i}")

        return await drive(publish, sink, n)


async def consumer_process(url: str, subject: str, fanout: bool) -> None:
    """Child role: consume and report each latency on stdout."""
    async with open_bus(url) as bus:
        out = sys.stdout

        async def handle(msg: Delivery) -> None:
            out.write(f"{time.time() - sent_at(msg.data)!r}\n")
            out.flush()

        await bus.subscribe(
            subject, handle, queue=None if fanout else "bench", concurrency=WINDOW, start="new"
        )
        out.write("ready\n")
        out.flush()
        await asyncio.Event().wait()


async def spawn_consumers(url: str, count: int, fanout: bool) -> list[Any]:
    procs = []
    for _ in range(count):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role-consumer",
            url,
            *(["--fanout"] if fanout else []),
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", line
        procs.append(proc)
    return procs


async def embedded_two_process(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"embedded://{tmp}/bus"
        async with open_bus(url) as bus:
            (proc,) = await spawn_consumers(url, 1, fanout=False)
            sink = Sink()
            reader = asyncio.create_task(feed_sink(proc, sink))

            async def publish(i: int, data: bytes) -> None:
                await bus.publish("bench.msg", data, msg_id=f"m{i}")

            try:
                return await drive(publish, sink, n)
            finally:
                reader.cancel()
                proc.kill()
                await proc.wait()


async def feed_sink(proc: Any, sink: Sink) -> None:
    while line := await proc.stdout.readline():
        now = time.time()
        lat = float(line)
        sink.latencies.append(lat)
        sink.count += 1
        sink.last = now
        if sink.count >= sink.target:
            sink.event.set()


async def embedded_fanout(events: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"embedded://{tmp}/bus"
        async with open_bus(url) as bus:
            procs = await spawn_consumers(url, 3, fanout=True)
            per_event: list[float] = []
            try:
                for i in range(events):
                    await bus.publish("bench.fan", payload(), msg_id=f"f{i}")
                    lats = [float(await p.stdout.readline()) for p in procs]
                    per_event.append(max(lats))
                    await asyncio.sleep(PACE)
            finally:
                for p in procs:
                    p.kill()
                    await p.wait()
        lat = sorted(per_event)
        return {"p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000}


# ------------------------------------------------------------------ raw clients


async def raw_nats(server: str, n: int) -> dict[str, float]:
    import nats

    ns = f"raw{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(server)
    js = nc.jetstream()
    stream = ns.upper()
    await js.add_stream(name=stream, subjects=[f"{ns}.>"])
    sink = Sink()
    try:
        psub = await js.pull_subscribe(f"{ns}.bench", durable="raw", stream=stream)

        async def consume() -> None:
            while True:
                try:
                    msgs = await psub.fetch(batch=WINDOW, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                for m in msgs:
                    sink.hit(m.data)
                    await m.ack()

        task = asyncio.create_task(consume())

        async def publish(i: int, data: bytes) -> None:
            await js.publish(f"{ns}.bench", data, headers={"Nats-Msg-Id": f"m{i}"})

        try:
            return await drive(publish, sink, n)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def raw_redis(server: str, n: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(server)
    stream = f"raw{uuid.uuid4().hex[:8]}"
    sink = Sink()
    await r.xgroup_create(stream, "raw", id="$", mkstream=True)
    try:

        async def consume() -> None:
            while True:
                reply = await r.xreadgroup("raw", "c1", {stream: ">"}, count=WINDOW, block=1000)
                for _, entries in reply or []:
                    for eid, fields in entries:
                        sink.hit(fields[b"d"])
                        await r.xack(stream, "raw", eid)

        task = asyncio.create_task(consume())

        async def publish(i: int, data: bytes) -> None:
            await r.xadd(stream, {"d": data, "m": f"m{i}"})

        try:
            return await drive(publish, sink, n)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await r.delete(stream)
        await r.aclose()


async def drop_namespace(kind: str, server: str, ns: str) -> None:
    if kind == "nats":
        import nats

        nc = await nats.connect(server)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(ns.upper())
        await nc.close()
    else:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(server)
        keys = [k async for k in r.scan_iter(match=f"{{{ns}}}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


def up(server: str) -> bool:
    host_port = server.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ main


async def versus(
    kind: str,
    server: str,
    raw: Callable[[str, int], Awaitable[dict[str, float]]],
    n: int,
    rounds: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """microhive and the raw client on one server: medians over alternating rounds."""

    async def ours(count: int) -> dict[str, float]:
        ns = f"bench{uuid.uuid4().hex[:8]}"
        sep = "&" if "?" in server else "?"
        try:
            return await microhive_inprocess(f"{server}{sep}namespace={ns}", count)
        finally:
            await drop_namespace(kind, server, ns)

    async def base(count: int) -> dict[str, float]:
        return await raw(server, count)

    await ours(n // 5)  # warm-up: imports, first connections, the server's first stream
    await base(n // 5)
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
    for i in range(rounds):
        order = (
            (("ours", ours), ("raw", base)) if i % 4 in (0, 3) else (("raw", base), ("ours", ours))
        )
        for name, side in order:
            runs[name].append(await side(n))
    return median(runs["ours"]), median(runs["raw"])


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    n = 2000 if args.quick else 10000
    rounds = 3 if args.quick else 5
    only = set(args.only.split(",")) if args.only else {"memory", "embedded", "nats", "redis"}
    rows: list[dict[str, Any]] = []

    suffix = ".traced" if args.tracing else ""

    def row(
        metric: str,
        value: float,
        unit: str,
        baseline: float | None = None,
        target: str | None = None,
        higher_is_better: bool = True,
    ) -> None:
        item: dict[str, Any] = {"metric": metric + suffix, "value": round(value, 3), "unit": unit}
        if baseline is not None:
            item["baseline"] = round(baseline, 3)
            ratio = value / baseline if higher_is_better else baseline / value
            item["ratio"] = round(ratio, 3) if baseline else None
        if target is not None:
            item["target"] = target
        rows.append(item)

    if "memory" in only:
        mem = await microhive_inprocess("memory://", n)
        row("bus.memory.throughput", mem["rate"], "msg/s")
    if "embedded" in only:
        emb = await embedded_two_process(n)
        row("bus.embedded.2proc.throughput", emb["rate"], "msg/s", target=">= 5000")
        row("bus.embedded.2proc.latency_p50", emb["p50"], "ms", target="<= 5")
        row("bus.embedded.2proc.latency_p99", emb["p99"], "ms")
        fan = await embedded_fanout(200 if args.quick else 500)
        row("bus.embedded.fanout3.latency_p50", fan["p50"], "ms", target="<= 10")
        row("bus.embedded.fanout3.latency_p99", fan["p99"], "ms")
    for kind, server, raw in (("nats", args.nats, raw_nats), ("redis", args.redis, raw_redis)):
        if kind not in only:
            continue
        if not up(server):
            print(f"# {kind}: {server} not reachable, skipped", file=sys.stderr)
            continue
        ours, base = await versus(kind, server, raw, n, rounds)
        row(f"bus.{kind}.throughput", ours["rate"], "msg/s", base["rate"], ">= 0.8x raw")
        row(f"bus.{kind}.latency_p50", ours["p50"], "ms", base["p50"], higher_is_better=False)
        row(f"bus.{kind}.latency_p99", ours["p99"], "ms", base["p99"], higher_is_better=False)
        row(f"bus.{kind}.cpu_per_msg", ours["cpu"], "us", base["cpu"], higher_is_better=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument(
        "--only", metavar="LIST", help="comma-separated subset of memory,embedded,nats,redis"
    )
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tracing", action="store_true", help="with a tracer provider installed")
    parser.add_argument("--role-consumer", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--fanout", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tracing and not args.role_consumer:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ[_TRACES_ENV] = f"sqlite:///{tmp}/traces.db"  # consumers inherit it
            with traced(consumer=False):
                run_role(args)
        return
    with traced(consumer=args.role_consumer is not None):
        run_role(args)


_TRACES_ENV = "MICROHIVE_BENCH_TRACES"


@contextlib.contextmanager
def traced(consumer: bool) -> Any:
    """Install a tracer provider writing to the store named by the environment, if any."""
    store = os.environ.get(_TRACES_ENV)
    if not store:
        yield
        return
    from microhive.tracing import TracingSettings, setup_tracing

    name = "bench-consumer" if consumer else "bench"
    with setup_tracing(name, 0, TracingSettings(store_url=store)) as handle:
        handle.install()
        yield


def run_role(args: argparse.Namespace) -> None:
    if args.role_consumer:
        subject = "bench.fan" if args.fanout else "bench.msg"
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(consumer_process(args.role_consumer, subject, args.fanout))
        return
    rows = asyncio.run(run(args))
    if args.json:
        for item in rows:
            print(json.dumps(item))
        return
    print(f"{'metric':44} {'value':>12} {'unit':6} {'raw':>12} {'ratio':>7}  target")
    for item in rows:
        base = item.get("baseline")
        ratio = item.get("ratio")
        print(
            f"{item['metric']:44} {item['value']:>12,.2f} {item['unit']:6} "
            f"{'' if base is None else f'{base:,.2f}':>12} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>7}  {item.get('target', '')}"
        )


if __name__ == "__main__":
    main()
