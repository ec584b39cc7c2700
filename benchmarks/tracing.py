"""Tracing overhead: tool calls with tracing on versus off, in the same run.

Issue 7's target: tool-call throughput through the gateway is at most 10% lower
with tracing on. Until the gateway exists, the workload is a stand-in with the
same shape: an MCP-style ``tools/call`` JSON-RPC request over loopback HTTP to a
server process, the call context carried in ``params._meta``, and per call the
span set a traced gateway makes -- the caller's ``tools/call`` client span, the
gateway's HTTP server span and its ``tools/call`` server span (which is the
tool-execution span under the MCP conventions) -- exported to the embedded
SQLite store by the batch processor. A second traced mode drops the HTTP span
on MCP routes, the option the MCP conventions allow. "Off" runs the same
instrumented code with no SDK provider (the non-recording default), which is
what a mesh with tracing disabled does.

To measure the real gateway, replace :func:`call_tool_through_gateway` (one call)
and :func:`start_gateway` (the server under test); the rest stays.

Run: ``.venv/bin/python benchmarks/tracing.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

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
    server_span,
    setup_tracing,
)

TARGET_RATIO = 0.90  # traced throughput / untraced throughput, at least


# --------------------------------------------------------------- the workload


def call_tool_through_gateway(
    client: httpx.Client, endpoint: str, i: int, *, provider: trace.TracerProvider
) -> None:
    """One tool call as an agent makes it. LEAD: swap in a real gateway ``tools/call``."""
    meta = CallContext.new(max_hops=8, timeout=30).next_hop().to_meta()
    with mcp_client_span("tools/call", "calc.add", meta=meta, request_id=i, provider=provider):
        body = {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "calc.add", "arguments": {"a": i, "b": 2}, "_meta": meta},
        }
        trace_headers = {k: v for k, v in meta.items() if k in ("traceparent", "tracestate")}
        reply = client.post(endpoint, json=body, headers=trace_headers)
        reply.raise_for_status()
        assert reply.json()["result"]["structuredContent"]["sum"] == i + 2


def _gateway_app() -> Any:
    """The stand-in gateway: decode the call context, open server + tool spans, do the work."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    def handle(message: dict[str, Any]) -> JSONResponse:
        params = message["params"]
        ctx = CallContext.from_meta(params.get("_meta"))
        ctx.check()
        with mcp_server_span(
            "tools/call",
            params["name"],
            meta=params.get("_meta"),
            request_id=message["id"],
            arguments=params["arguments"],
            ctx=ctx,
        ) as tool:
            args = params["arguments"]
            result = {"sum": args["a"] + args["b"]}
            tool.tool_result(result)
        content = {"content": [{"type": "text", "text": json.dumps(result)}]}
        return JSONResponse(
            {
                "jsonrpc": "2.0",
                "id": message["id"],
                "result": {**content, "structuredContent": result},
            }
        )

    async def mcp(request: Request) -> JSONResponse:
        # As the service runtime would: an HTTP server span around every request.
        with server_span("POST", "/mcp", headers=request.headers) as span:
            reply = handle(await request.json())
            span.http_status(reply.status_code)
        return reply

    async def mcp_only(request: Request) -> JSONResponse:
        # The leaner option: no HTTP span on MCP routes, the MCP span is the server span.
        return handle(await request.json())

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/mcp", mcp, methods=["POST"]),
            Route("/mcp-only", mcp_only, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def _serve(port: int, store_url: str | None) -> None:
    """Server-process entry point (``--serve``): traced when given a store."""
    import uvicorn

    handle = None
    if store_url is not None:
        handle = setup_tracing("gateway", 0, TracingSettings(store_url=store_url))
        handle.install()
    try:
        uvicorn.run(_gateway_app(), host="127.0.0.1", port=port, log_level="warning")
    finally:
        if handle is not None:
            handle.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def start_gateway(store_url: str | None) -> Iterator[str]:
    """Start the server under test in its own process; yields its endpoint URL."""
    port = _free_port()
    cmd = [sys.executable, __file__, "--serve", str(port)]
    if store_url is not None:
        cmd += ["--store", store_url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client() as probe:
            while True:
                try:
                    if probe.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("benchmark server did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# -------------------------------------------------------------- measurements


def _rate(fn: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def measure_gateway(calls: int, rounds: int, store_url: str) -> dict[str, float]:
    """Calls per second, traced and untraced, rounds interleaved so drift hits all modes.

    ``on``: client span + HTTP server span + MCP server (tool) span per call;
    ``lean``: the same without the HTTP server span; ``sampled``: ``on`` with
    ``tracing.sample_ratio: 0.1``; ``off``: tracing disabled.
    """
    rates: dict[str, list[float]] = {"on": [], "lean": [], "sampled": [], "off": []}
    sampled_settings = TracingSettings(store_url=store_url, sample_ratio=0.1)
    with (
        setup_tracing("agent", 0, TracingSettings(store_url=store_url)) as agent,
        setup_tracing("agent", 1, sampled_settings) as sampled_agent,
        start_gateway(store_url) as traced_url,
        start_gateway(None) as plain_url,
        httpx.Client() as client,
    ):
        traced = partial(call_tool_through_gateway, client, provider=agent.provider)
        modes = {
            "on": partial(traced, traced_url),
            "lean": partial(traced, traced_url + "-only"),
            "sampled": partial(
                call_tool_through_gateway, client, traced_url, provider=sampled_agent.provider
            ),
            "off": partial(
                call_tool_through_gateway, client, plain_url, provider=NoOpTracerProvider()
            ),
        }
        for call in modes.values():
            _rate(call, 50)  # warm up connections and code paths
        for _ in range(rounds):
            for mode, call in modes.items():
                rates[mode].append(_rate(call, calls))
    result = {mode: statistics.median(values) for mode, values in rates.items()}
    # Each round runs every mode back to back; the median of the per-round ratios
    # is steadier on a busy machine than the ratio of the medians.
    for mode in ("on", "lean", "sampled"):
        result[f"{mode}_ratio"] = statistics.median(
            a / b for a, b in zip(rates[mode], rates["off"], strict=True)
        )
    return result


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


def measure_store(n: int, path: Path) -> float:
    """Spans per second the SQLite exporter writes (batches of 512, as the processor sends)."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": "bench"})
    spans = [
        ReadableSpan(
            "execute_tool calc.add",
            context=SpanContext(trace_id=i + 1, span_id=i + 1, is_remote=False),
            attributes={"gen_ai.tool.name": "calc.add", "microhive.hops": 7},
            resource=resource,
            start_time=time.time_ns(),
            end_time=time.time_ns() + 1000,
        )
        for i in range(n)
    ]
    exporter = SqliteSpanExporter(path)
    start = time.perf_counter()
    for i in range(0, n, 512):
        exporter.export(spans[i : i + 512])
    elapsed = time.perf_counter() - start
    exporter.shutdown()
    return n / elapsed


# --------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        _serve(args.serve, args.store)
        return

    calls, rounds, spans = (200, 5, 3000) if args.quick else (400, 15, 10000)
    with tempfile.TemporaryDirectory() as tmp:
        store_url = f"sqlite:///{Path(tmp) / 'traces.db'}"
        gateway = measure_gateway(calls, rounds, store_url)
        span_set = measure_span_set(spans, f"sqlite:///{Path(tmp) / 'spans.db'}")
        store_rate = measure_store(spans, Path(tmp) / "store.db")
        with TraceStore(store_url) as store:
            stored = store.count_spans()

    ratio = gateway["on_ratio"]
    rows: list[dict[str, Any]] = [
        {
            "metric": "tool_calls_per_s_traced",
            "value": round(gateway["on"], 1),
            "unit": "calls/s",
            "baseline": round(gateway["off"], 1),
            "ratio": round(ratio, 3),
            "target": f">= {TARGET_RATIO}",
        },
        {
            "metric": "tool_calls_per_s_traced_mcp_span_only",
            "value": round(gateway["lean"], 1),
            "unit": "calls/s",
            "baseline": round(gateway["off"], 1),
            "ratio": round(gateway["lean_ratio"], 3),
            "target": f">= {TARGET_RATIO}",
        },
        {
            "metric": "tool_calls_per_s_sampled_10pct",
            "value": round(gateway["sampled"], 1),
            "unit": "calls/s",
            "baseline": round(gateway["off"], 1),
            "ratio": round(gateway["sampled_ratio"], 3),
            "target": f">= {TARGET_RATIO}",
        },
        {
            "metric": "span_set_cpu_us_per_call",
            "value": round(span_set["on"], 1),
            "unit": "us",
            "baseline": round(span_set["off"], 1),
            "ratio": round(span_set["on"] / span_set["off"], 2),
            "target": None,
        },
        {
            "metric": "store_export_spans_per_s",
            "value": round(store_rate),
            "unit": "spans/s",
            "baseline": None,
            "ratio": None,
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
    print(f"{'metric':38} {'value':>10} {'baseline':>10} {'ratio':>7}  target")
    for row in rows:
        baseline = "" if row["baseline"] is None else row["baseline"]
        ratio_text = "" if row["ratio"] is None else row["ratio"]
        print(
            f"{row['metric']:38} {row['value']:>10} {baseline!s:>10} {ratio_text!s:>7}  "
            f"{row['target'] or ''}  ({row['unit']})"
        )
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"traced throughput is {ratio:.1%} of untraced: {verdict} the target (>= 90%)")


if __name__ == "__main__":
    main()
