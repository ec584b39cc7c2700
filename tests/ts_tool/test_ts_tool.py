"""Language-agnostic by proof: a TypeScript tool server (official TS SDK) behind the gateway.

The server in ``server.ts`` is built with ``npm ci`` and ``tsc`` when needed,
started on a free port, registered with the gateway through the admin API, and
called through the gateway by the Python SDK client.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.mcp_gateway.harness import client, eventually, free_port, gateway, structured

HERE = Path(__file__).parent


def _build() -> None:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to build the TypeScript tool server")
    if not (HERE / "node_modules" / "@modelcontextprotocol" / "sdk").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=300)
    out = HERE / "dist" / "server.js"
    if not out.exists() or out.stat().st_mtime < (HERE / "server.ts").stat().st_mtime:
        subprocess.run([npm, "run", "build"], cwd=HERE, check=True, timeout=300)


@pytest.fixture(scope="module")
def ts_server() -> Iterator[str]:
    _build()
    port = free_port()
    proc = subprocess.Popen(
        ["node", str(HERE / "dist" / "server.js"), str(port)],
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the TypeScript tool server did not start")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_python_agent_calls_typescript_tool_through_gateway(ts_server: str) -> None:
    async with gateway([]) as (_, base):
        async with httpx.AsyncClient(base_url=base) as admin:
            registered = await admin.post(
                "/admin/upstreams", json={"namespace": "ts", "url": ts_server, "version": "1.0.0"}
            )
            assert registered.status_code == 200, registered.text
            assert registered.json()["upstream"]["tools"] == 3
        async with client(f"{base}/mcp") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == {"ts_reverse", "ts_word_count", "ts_grow"}
            result = await c.call_tool(
                "ts_reverse", {"text": "microhive"}, meta={"io.microhive/hops": 7}
            )
            got = structured(result)
            assert got == {"reversed": "evihorcim", "hops": 6, "language": "typescript"}
            counted = await asyncio.gather(
                *(c.call_tool("ts_word_count", {"text": "one two " * i}) for i in range(1, 6))
            )
            assert [structured(r)["words"] for r in counted] == [2, 4, 6, 8, 10]

            # a tool added at run time is announced (notifications/tools/list_changed)
            # and appears through the gateway
            assert not (await c.call_tool("ts_grow", {})).is_error

            async def has_shout() -> bool:
                return "ts_shout" in {t.name for t in (await c.list_tools()).tools}

            await eventually(has_shout, within=10)
            shouted = await c.call_tool("ts_shout", {"text": "hi"})
            assert shouted.content[0].text == "HI"
