"""What the service runtime's middleware costs per request.

Drives ASGI apps directly (no sockets, so the network does not drown the
number): a bare Starlette app with the same handler is the baseline, measured in
the same run; then the full microhive chain (metrics, access log, body limit,
call context + span, error mapping), without and with a bearer token.

    .venv/bin/python benchmarks/service_overhead.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from microhive.service import Service

TOKEN = "bench-token"


async def handler(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "id": request.path_params["item"]})


def bare_app() -> ASGIApp:
    return Starlette(routes=[Route("/items/{item}", handler)])


def service_app(token: str | None) -> ASGIApp:
    service = Service(name="bench", token=token)
    service.add_route("/items/{item}", handler)
    return service.asgi()


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/7",
        "raw_path": b"/items/7",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def measure(app: ASGIApp, n: int, headers: list[tuple[bytes, bytes]]) -> float:
    """Seconds per request, best of three rounds of ``n``."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            await app(_scope(list(headers)), receive, send)
        best = min(best, (time.perf_counter() - start) / n)
    assert set(statuses) == {200}, set(statuses)
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--json", action="store_true", help="one JSON object per metric")
    args = parser.parse_args()
    logging.getLogger("microhive.access").setLevel(logging.WARNING)  # no log I/O in the loop
    n = 2_000 if args.quick else 20_000
    trace = [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())]

    baseline = await measure(bare_app(), n, trace)
    full = await measure(service_app(None), n, trace)
    secured = await measure(service_app(TOKEN), n, trace + auth)
    rows = [
        ("bare_starlette_us_per_request", baseline, None),
        ("service_chain_us_per_request", full, baseline),
        ("service_chain_with_auth_us_per_request", secured, baseline),
    ]
    if args.json:
        for metric, value, base in rows:
            print(
                json.dumps(
                    {
                        "metric": metric,
                        "value": round(value * 1e6, 2),
                        "unit": "us",
                        "baseline": round(base * 1e6, 2) if base else None,
                        "ratio": round(value / base, 2) if base else None,
                        "target": None,
                    }
                )
            )
        return
    print(f"{'app':<40} {'us/request':>12} {'vs bare':>9}   ({n} requests x 3, best round)")
    for metric, value, base in rows:
        ratio = f"{value / base:.2f}x" if base else "-"
        print(f"{metric:<40} {value * 1e6:>12.1f} {ratio:>9}")
    print(f"{'middleware overhead (us/request)':<40} {(full - baseline) * 1e6:>12.1f}")


if __name__ == "__main__":
    asyncio.run(main())
