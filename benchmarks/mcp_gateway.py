"""MCP gateway benchmark: the cost of the gateway hop and of not pooling sessions.

Usage::

    .venv/bin/python benchmarks/mcp_gateway.py [--quick] [--json] [--stack auto|h11]

One official-SDK tool server (``MCPServer``, streamable HTTP) and the gateway run
as separate processes on loopback; this process is the caller, with the official
SDK client. The same tool call (``add``) is timed:

* **direct** -- one long-lived client session straight to the tool server;
* **gateway** -- one long-lived client session to the gateway, which forwards
  over its pooled upstream session;
* **session-per-call** -- a client that opens a new MCP session for every call
  (what a naive agent does), straight to the tool server.

Each path runs sequentially and with 16 concurrent callers (sharing the session
where there is one). Reported: p50/p99 latency, calls/s, and the ratios.
Targets: gateway p50 <= 1.3x direct, gateway throughput >= 0.8x direct, pooled
gateway path >= 5x faster (p50) than session-per-call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

CONCURRENCY = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the servers (run in child processes) --------------------------------------------------
def serve_upstream(port: int, stack: str) -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench-tools")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    logging.disable(logging.WARNING)
    app = server.streamable_http_app()
    http, loop = ("h11", "asyncio") if stack == "h11" else ("auto", "auto")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        http=http,
        loop=loop,
    )


def serve_gateway(port: int, upstream: str, stack: str) -> None:
    import uvicorn

    from microhive.mcp.gateway import Gateway, GatewayHTTP, GatewaySettings, RoleAuth
    from microhive.mcp.registry import Registry, UpstreamSpec
    from microhive.service import settle_heap

    class SettledServer(uvicorn.Server):
        """Tunes the heap once started, as ``microhive serve`` does."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            settle_heap()

    logging.disable(logging.WARNING)

    async def main() -> None:
        registry = Registry([UpstreamSpec("calc", upstream)])
        settings = GatewaySettings(embedder="none")
        async with Gateway(registry, RoleAuth({}), settings) as gw:
            http = GatewayHTTP(gw)
            async with http.run():
                config = uvicorn.Config(
                    http.app(),
                    host="127.0.0.1",
                    port=port,
                    log_level="error",
                    access_log=False,
                    lifespan="off",
                    http="h11" if stack == "h11" else "auto",
                )
                await SettledServer(config).serve()

    factory = None
    if stack != "h11":
        # uvloop when installed, as uvicorn.run picks it for the direct server
        # (the app string is never loaded: only the loop setting is read)
        factory = uvicorn.Config("unused:app", loop="auto").get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server on port {port} did not start") from None
            time.sleep(0.05)


# -- measuring -----------------------------------------------------------------------------
async def timed(call: Callable[[], Awaitable[Any]], n: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "calls_per_s": len(latencies) / elapsed,
    }


async def measure(direct_url: str, gateway_url: str, n: int, n_fresh: int) -> dict[str, Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    # idle connections are dropped before uvicorn's 5 s keep-alive closes them
    limits = httpx2.Limits(keepalive_expiry=3.0)
    results: dict[str, Any] = {}
    async with (
        httpx2.AsyncClient(limits=limits, timeout=30) as http_direct,
        httpx2.AsyncClient(limits=limits, timeout=30) as http_gateway,
        Client(streamable_http_client(direct_url, http_client=http_direct), cache=None) as direct,
        Client(streamable_http_client(gateway_url, http_client=http_gateway), cache=None) as gw,
    ):

        async def direct_call() -> None:
            result = await direct.call_tool("add", {"a": 1, "b": 2})
            assert not result.is_error

        async def gateway_call() -> None:
            result = await gw.call_tool("calc_add", {"a": 1, "b": 2})
            assert not result.is_error, result.content

        async def fresh_call() -> None:
            async with Client(direct_url, cache=None) as once:
                result = await once.call_tool("add", {"a": 1, "b": 2})
                assert not result.is_error

        for call in (direct_call, gateway_call, fresh_call):  # warm up
            for _ in range(20):
                await call()
        for label, concurrency in (("sequential", 1), ("concurrent", CONCURRENCY)):
            # interleave rounds so drift on a shared machine hits every path alike
            rounds: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": [], "fresh": []}
            for _ in range(3):
                rounds["direct"].append(await timed(direct_call, n // 3, concurrency))
                rounds["gateway"].append(await timed(gateway_call, n // 3, concurrency))
                rounds["fresh"].append(await timed(fresh_call, n_fresh // 3, concurrency))
            results[label] = {
                path: {
                    "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    "calls_per_s": statistics.median(r["calls_per_s"] for r in rs),
                }
                for path, rs in rounds.items()
            }
    return results


def report(results: dict[str, Any], as_json: bool) -> None:
    lines: list[dict[str, Any]] = []
    for mode in ("sequential", "concurrent"):
        r = results[mode]
        for path in ("direct", "gateway", "fresh"):
            for metric, unit in (("p50_ms", "ms"), ("p99_ms", "ms"), ("calls_per_s", "calls/s")):
                lines.append(
                    {
                        "metric": f"{mode}.{path}.{metric}",
                        "value": round(r[path][metric], 3),
                        "unit": unit,
                    }
                )
        d, g, f = r["direct"], r["gateway"], r["fresh"]
        lines.append(
            {
                "metric": f"{mode}.gateway_p50_vs_direct",
                "value": round(g["p50_ms"], 3),
                "unit": "ms",
                "baseline": round(d["p50_ms"], 3),
                "ratio": round(g["p50_ms"] / d["p50_ms"], 3),
                "target": "<= 1.3",
            }
        )
        lines.append(
            {
                "metric": f"{mode}.gateway_throughput_vs_direct",
                "value": round(g["calls_per_s"], 1),
                "unit": "calls/s",
                "baseline": round(d["calls_per_s"], 1),
                "ratio": round(g["calls_per_s"] / d["calls_per_s"], 3),
                "target": ">= 0.8",
            }
        )
        lines.append(
            {
                "metric": f"{mode}.session_per_call_vs_pooled_gateway_p50",
                "value": round(f["p50_ms"], 3),
                "unit": "ms",
                "baseline": round(g["p50_ms"], 3),
                "ratio": round(f["p50_ms"] / g["p50_ms"], 3),
                "target": ">= 5",
            }
        )
    if as_json:
        for line in lines:
            print(json.dumps(line))
        return
    print(f"{'path':<34}{'p50 ms':>10}{'p99 ms':>10}{'calls/s':>10}")
    for mode in ("sequential", "concurrent"):
        for path, label in (
            ("direct", "direct"),
            ("gateway", "gateway"),
            ("fresh", "session-per-call"),
        ):
            row = results[mode][path]
            name = f"{mode} {label}"
            print(
                f"{name:<34}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['calls_per_s']:>10.0f}"
            )
    print()
    for line in lines:
        if "ratio" in line:
            print(f"{line['metric']:<52} ratio {line['ratio']:>7.2f}  (target {line['target']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument(
        "--stack",
        choices=("auto", "h11"),
        default="auto",
        help="server HTTP/event-loop stack: auto (httptools+uvloop when installed) or h11+asyncio",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.stack)
        return
    if args.serve_gateway:
        serve_gateway(int(args.serve_gateway[0]), args.serve_gateway[1], args.stack)
        return

    logging.disable(logging.WARNING)
    up_port, gw_port = free_port(), free_port()
    direct_url = f"http://127.0.0.1:{up_port}/mcp"
    up = spawn("--serve-upstream", str(up_port), "--stack", args.stack)
    gw = None
    try:
        wait_port(up_port, up)
        gw = spawn("--serve-gateway", str(gw_port), direct_url, "--stack", args.stack)
        wait_port(gw_port, gw)
        n, n_fresh = (300, 60) if args.quick else (1500, 300)
        results = asyncio.run(measure(direct_url, f"http://127.0.0.1:{gw_port}/mcp", n, n_fresh))
        report(results, args.json)
    finally:
        procs = [p for p in (gw, up) if p is not None]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
