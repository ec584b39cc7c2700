"""Tracing overhead: tool calls through the gateway with tracing on versus off, same run.

Issue 7's target: tool-call throughput through the gateway is at most 10% lower
with tracing on. The workload is real: two meshes, each a tool service
(``kind: tool``, one ``add`` function) and a gateway, run as ``microhive serve``
processes exactly as ``microhive up`` starts them. One mesh has tracing on (the
embedded SQLite store, every span the services make: the runtime's, the MCP
SDK's, the gateway's and the tool service's); the other has ``tracing.enabled:
false``. This process is the agent: an official-SDK client session to a gateway,
each call wrapped in the agent's ``tools/call`` client span (traced: a real
provider exporting to the same store; untraced: no provider) with the call
context in ``params._meta``.

Modes, rounds interleaved so drift on a shared machine hits all of them alike:
``on`` (everything traced), ``sampled`` (the agent samples 10% of runs; the
services follow its decision), ``off`` (tracing disabled). Each runs sequential
calls and 16 concurrent callers. Each timed window lasts seconds, several times
the exporters' 0.5 s schedule: with windows shorter than that, whether an export
burst fell inside a window or just after it decided much of a round's ratio.

``--noise`` adds an A/A control: the same rounds against two identical untraced
meshes, whose ratio shows how far from 1.0 this machine puts two equal things.

Run: ``.venv/bin/python benchmarks/tracing.py [--quick] [--json] [--noise]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NoOpTracerProvider, SpanContext

from microhive.context import CallContext
from microhive.tracing import (
    SqliteSpanExporter,
    TraceStore,
    TracingSettings,
    mcp_client_span,
    mcp_server_span,
    new_trace_id,
    server_span,
    setup_tracing,
)

TARGET_RATIO = 0.90  # traced throughput / untraced throughput, at least
CONCURRENCY = 16

TOOLS = """\
def add(a: int, b: int) -> int:
    \"\"\"Add two integers.\"\"\"
    return a + b
"""

MESH = """\
name: bench-{label}
stores:
  traces: sqlite:///traces.db
tracing:
  enabled: {enabled}
services:
  calc:
    kind: tool
    port: {calc_port}
    settings: {{tools: "benchtools:add"}}
  gateway:
    kind: gateway
    port: {gateway_port}
    depends_on: [calc]
    settings: {{embedder: none}}
"""


# --------------------------------------------------------------- the workload


async def call_tool_through_gateway(client: Any, i: int, provider: trace.TracerProvider) -> None:
    """One tool call as an agent makes it: its client span, the context in ``_meta``."""
    meta = CallContext.new(max_hops=8, timeout=30).next_hop().to_meta()
    with mcp_client_span("tools/call", "calc_add", meta=meta, request_id=i, provider=provider):
        result = await client.call_tool("calc_add", {"a": i, "b": 2}, meta=meta)
    if result.is_error or result.structured_content != {"result": i + 2}:
        raise RuntimeError(f"unexpected tool result: {result}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def start_gateway(folder: Path, *, traced: bool) -> Iterator[tuple[str, list[int]]]:
    """A mesh (tool service + gateway) as ``microhive serve`` processes.

    Yields the gateway's ``/mcp`` URL and the process ids (for CPU accounting).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchtools.py").write_text(TOOLS, encoding="utf-8")
    calc_port, gateway_port = _free_port(), _free_port()
    mesh = MESH.format(
        label="traced" if traced else "plain",
        enabled="true" if traced else "false",
        calc_port=calc_port,
        gateway_port=gateway_port,
    )
    (folder / "microhive.yaml").write_text(mesh, encoding="utf-8")
    env = {**os.environ, "MICROHIVE_LOG_LEVEL": "WARNING"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, port in (("calc", calc_port), ("gateway", gateway_port)):
            cmd = [sys.executable, "-m", "microhive", "serve", name, "-f", "microhive.yaml"]
            procs.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL))
            _wait_ready(port, procs[-1])
        yield f"http://127.0.0.1:{gateway_port}/mcp", [p.pid for p in procs]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client() as probe:
        while True:
            try:
                if probe.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"benchmark service on port {port} did not become ready")
            time.sleep(0.05)


# -------------------------------------------------------------- measurements


def _rate(fn: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


async def _arate(call: Callable[[int], Awaitable[None]], n: int, concurrency: int) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call(left)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


class _Accounting:
    """CPU seconds of this process and the mesh processes (every thread: exporters too)."""

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self._procs = [psutil.Process(pid) for pid in pids] + [psutil.Process()]

    def cpu(self) -> float:
        return float(sum(t.user + t.system for t in (p.cpu_times() for p in self._procs)))


def _drain(store_url: str, flush: Callable[[], object]) -> None:
    """Wait until every span of the last mode is in the store.

    The agent's exporter is flushed; the services export on their own schedule
    (every 0.5 s), so the store is polled until its span count holds still for
    longer than that. Without this, one mode's export work would be charged to
    the next mode's calls.
    """
    flush()
    with TraceStore(store_url) as store:
        last, still_since = store.count_spans(), time.monotonic()
        while time.monotonic() - still_since < 0.8:
            time.sleep(0.05)
            now = store.count_spans()
            if now != last:
                last, still_since = now, time.monotonic()


async def _measure_modes(
    urls: dict[str, str],
    providers: dict[str, trace.TracerProvider],
    drain: Callable[[], None],
    cpu: Callable[[], float],
    calls: int,
    rounds: int,
    modes: Sequence[str] = ("on", "sampled", "off"),
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Per kind and mode, one (calls/s, CPU ms per call) pair per round.

    ``on`` and ``sampled`` share the session to ``urls["on"]``; ``off`` uses ``urls["off"]``.
    """
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    modes = list(modes)
    rates: dict[str, dict[str, list[tuple[float, float]]]] = {
        kind: {mode: [] for mode in modes} for kind in ("sequential", "concurrent")
    }
    limits = httpx2.Limits(keepalive_expiry=3.0)
    async with (
        httpx2.AsyncClient(limits=limits, timeout=30) as http_traced,
        httpx2.AsyncClient(limits=limits, timeout=30) as http_plain,
        Client(streamable_http_client(urls["on"], http_client=http_traced), cache=None) as traced,
        Client(streamable_http_client(urls["off"], http_client=http_plain), cache=None) as plain,
    ):
        clients = {"on": traced, "sampled": traced, "off": plain}

        def one(mode: str) -> Callable[[int], Awaitable[None]]:
            client, provider = clients[mode], providers[mode]

            async def call(i: int) -> None:
                await call_tool_through_gateway(client, i, provider)

            return call

        for mode in modes:
            await _arate(one(mode), 200, CONCURRENCY)  # warm up connections and code paths
        await anyio.to_thread.run_sync(drain)
        for r in range(rounds):
            shift = r % len(modes)
            order = modes[shift:] + modes[:shift]  # no mode always follows another
            for kind, concurrency in (("sequential", 1), ("concurrent", CONCURRENCY)):
                for mode in order:
                    before = cpu()
                    rate = await _arate(one(mode), calls, concurrency)
                    await anyio.to_thread.run_sync(drain)  # its export work is its own
                    used = (cpu() - before) / calls * 1000
                    rates[kind][mode].append((rate, used))
    return rates


def measure_gateway(calls: int, rounds: int, folder: Path) -> dict[str, float]:
    """Calls per second and CPU per call through real gateways, traced and untraced.

    Ratios are medians of per-round ratios (each round runs every mode back to
    back), steadier on a busy machine than ratios of medians.
    """
    traced_dir, plain_dir = folder / "traced", folder / "plain"
    store_url = f"sqlite:///{traced_dir / 'traces.db'}"
    with (
        start_gateway(traced_dir, traced=True) as (traced_url, traced_pids),
        start_gateway(plain_dir, traced=False) as (plain_url, plain_pids),
        setup_tracing("agent", 0, TracingSettings(store_url=store_url)) as agent,
        setup_tracing("agent", 1, TracingSettings(store_url=store_url, sample_ratio=0.1)) as p10,
    ):
        providers: dict[str, trace.TracerProvider] = {
            "on": agent.provider,
            "sampled": p10.provider,
            "off": NoOpTracerProvider(),
        }
        urls = {"on": traced_url, "off": plain_url}
        accounting = _Accounting(traced_pids + plain_pids)

        def drain() -> None:
            _drain(store_url, lambda: (agent.flush(), p10.flush()))

        rates = asyncio.run(_measure_modes(urls, providers, drain, accounting.cpu, calls, rounds))
    result: dict[str, float] = {}
    for kind, by_mode in rates.items():
        for mode, values in by_mode.items():
            result[f"{kind}.{mode}"] = statistics.median(rate for rate, _ in values)
            result[f"{kind}.{mode}_cpu_ms"] = statistics.median(ms for _, ms in values)
        for mode in ("on", "sampled"):
            pairs = zip(by_mode[mode], by_mode["off"], strict=True)
            ratios = [(a[0] / b[0], a[1] / b[1]) for a, b in pairs]
            result[f"{kind}.{mode}_ratio"] = statistics.median(r for r, _ in ratios)
            result[f"{kind}.{mode}_cpu_ratio"] = statistics.median(c for _, c in ratios)
    return result


def measure_noise(calls: int, rounds: int, folder: Path) -> dict[str, float]:
    """The harness's own noise: the same rounds against two *identical* untraced meshes.

    Whatever ratio this reads is what the machine does to two equal things, so a
    traced/untraced ratio within that distance of 1.0 cannot be told from it.
    """
    noop = NoOpTracerProvider()
    with (
        start_gateway(folder / "a", traced=False) as (url_a, _),
        start_gateway(folder / "b", traced=False) as (url_b, _),
    ):
        rates = asyncio.run(
            _measure_modes(
                {"on": url_a, "off": url_b},
                {"on": noop, "off": noop},
                drain=lambda: None,  # nothing is exported
                cpu=lambda: 0.0,
                calls=calls,
                rounds=rounds,
                modes=("on", "off"),
            )
        )
    out: dict[str, float] = {}
    for kind, by_mode in rates.items():
        ratios = [a[0] / b[0] for a, b in zip(by_mode["on"], by_mode["off"], strict=True)]
        out[kind] = statistics.median(ratios)
        out[f"{kind}.low"], out[f"{kind}.high"] = min(ratios), max(ratios)
    return out


def measure_span_set(n: int, store_url: str) -> dict[str, float]:
    """CPU microseconds per call for the span set alone (no network), traced and untraced.

    Process CPU time counts the export thread too, and a busy machine disturbs
    it far less than wall time.
    """

    def one(provider: trace.TracerProvider) -> Callable[[int], None]:
        def call(i: int) -> None:
            meta = CallContext.new(max_hops=8).next_hop().to_meta()
            with mcp_client_span("tools/call", "calc.add", meta=meta, provider=provider):
                pass
            ctx = CallContext.from_meta(meta)
            with (
                server_span("POST", "/mcp", provider=provider),
                mcp_server_span("tools/call", "calc.add", meta=meta, ctx=ctx, provider=provider),
            ):
                pass

        return call

    def cpu(provider: trace.TracerProvider, flush: Callable[[], object]) -> float:
        # Chunks that fit the export queue, each flushed inside the measurement:
        # the export work is counted and no span is dropped.
        start = time.process_time()
        for _ in range(n // 1000):
            _rate(one(provider), 1000)
            flush()
        return (time.process_time() - start) / (n // 1000 * 1000) * 1e6

    with setup_tracing("bench", 0, TracingSettings(store_url=store_url)) as handle:
        on = cpu(handle.provider, handle.flush)
    off = cpu(NoOpTracerProvider(), lambda: None)
    return {"on": on, "off": off}


def measure_store(n: int, folder: Path) -> dict[str, float]:
    """CPU microseconds per span the SQLite exporter spends, by how trace ids are made.

    One span per trace, in batches of 512 as the batch processor sends them, into
    a store growing to ``n`` spans: ``mesh`` ids come from a microhive tracer
    provider (the clock first), ``random`` ids are the SDK's default (all bits random).
    """
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": "bench"})
    makers: dict[str, Callable[[], int]] = {
        "mesh": new_trace_id,
        "random": lambda: random.getrandbits(128) or 1,
    }
    out: dict[str, float] = {}
    for name, make in makers.items():
        spans = [
            ReadableSpan(
                "execute_tool calc.add",
                context=SpanContext(trace_id=make(), span_id=i + 1, is_remote=False),
                attributes={"gen_ai.tool.name": "calc.add", "microhive.hops": 7},
                resource=resource,
                start_time=time.time_ns(),
                end_time=time.time_ns() + 1000,
            )
            for i in range(n)
        ]
        exporter = SqliteSpanExporter(folder / f"store-{name}.db", max_spans=None)
        start = time.process_time()
        for i in range(0, n, 512):
            exporter.export(spans[i : i + 512])
        out[name] = (time.process_time() - start) / n * 1e6
        exporter.shutdown()
    return out


# --------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument(
        "--noise",
        action="store_true",
        help="also measure the harness's noise: two identical untraced meshes (an A/A run)",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    calls, rounds, spans = (400, 3, 3000) if args.quick else (1200, 5, 10000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gateway = measure_gateway(calls, rounds, folder)
        span_set = measure_span_set(spans, f"sqlite:///{folder / 'spans.db'}")
        store_cost = measure_store(spans * 6, folder)
        with TraceStore(f"sqlite:///{folder / 'traced' / 'traces.db'}") as store:
            stored = store.count_spans()
        noise = measure_noise(calls, rounds, folder / "noise") if args.noise else None

    rows: list[dict[str, Any]] = []
    for kind in ("sequential", "concurrent"):
        for mode, metric in (("on", "traced"), ("sampled", "sampled_10pct")):
            rows.append(
                {
                    "metric": f"{kind}.tool_calls_per_s_{metric}",
                    "value": round(gateway[f"{kind}.{mode}"], 1),
                    "unit": "calls/s",
                    "baseline": round(gateway[f"{kind}.off"], 1),
                    "ratio": round(gateway[f"{kind}.{mode}_ratio"], 3),
                    "target": f">= {TARGET_RATIO}",
                }
            )
        rows.append(
            {
                "metric": f"{kind}.cpu_ms_per_call_traced_all_processes",
                "value": round(gateway[f"{kind}.on_cpu_ms"], 3),
                "unit": "ms",
                "baseline": round(gateway[f"{kind}.off_cpu_ms"], 3),
                "ratio": round(gateway[f"{kind}.on_cpu_ratio"], 3),
                "target": None,
            }
        )
    noise_stats = (("median", ""), ("lowest_round", ".low"), ("highest_round", ".high"))
    for kind in ("sequential", "concurrent") if noise is not None else ():
        for stat, suffix in noise_stats:
            value = round(noise[kind + suffix], 3)
            rows.append(
                {
                    "metric": f"{kind}.noise_untraced_vs_untraced_{stat}",
                    "value": value,
                    "unit": "ratio",
                    "baseline": 1.0,
                    "ratio": value,
                    "target": None,
                }
            )
    rows += [
        {
            "metric": "span_set_cpu_us_per_call",
            "value": round(span_set["on"], 1),
            "unit": "us",
            "baseline": round(span_set["off"], 1),
            "ratio": round(span_set["on"] / span_set["off"], 2),
            "target": None,
        },
        {
            "metric": "store_export_cpu_us_per_span_mesh_ids_vs_random_ids",
            "value": round(store_cost["mesh"], 2),
            "unit": "us",
            "baseline": round(store_cost["random"], 2),
            "ratio": round(store_cost["mesh"] / store_cost["random"], 3),
            "target": None,
        },
        {
            "metric": "spans_stored_during_gateway_run",
            "value": stored,
            "unit": "spans",
            "baseline": None,
            "ratio": None,
            "target": None,
        },
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"tracing benchmark ({'quick' if args.quick else 'full'}; pid {os.getpid()})")
    print(f"{'metric':44} {'value':>10} {'baseline':>10} {'ratio':>7}  target")
    for row in rows:
        baseline = "" if row["baseline"] is None else row["baseline"]
        ratio_text = "" if row["ratio"] is None else row["ratio"]
        print(
            f"{row['metric']:44} {row['value']:>10} {baseline!s:>10} {ratio_text!s:>7}  "
            f"{row['target'] or ''}  ({row['unit']})"
        )
    for kind in ("sequential", "concurrent"):
        ratio = gateway[f"{kind}.on_ratio"]
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(
            f"{kind}: traced throughput is {ratio:.1%} of untraced: {verdict} the target (>= 90%)"
        )


if __name__ == "__main__":
    main()
