"""Hot swap: re-point a namespace at a new upstream while calls flow; none may fail."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from microhive.mcp.registry import UpstreamSpec

from .harness import client, eventually, gateway, structured, upstream


async def test_attach_under_continuous_load_loses_no_call() -> None:
    results: Counter[str] = Counter()
    failures: list[str] = []
    stop = asyncio.Event()
    async with upstream("v1") as v1, upstream("v2") as v2:  # noqa: SIM117 - the gateway outlives the client below
        async with gateway([UpstreamSpec("search", v1, "v1")]) as (gw, base):
            async with client(f"{base}/mcp") as c:

                async def caller(slow: bool) -> None:
                    while not stop.is_set():
                        try:
                            if slow:  # in flight across the swap
                                result = await c.call_tool("search_slow", {"seconds": 0.3})
                                text = structured(result)
                                results[text.split()[0] + "-slow"] += 1
                            else:
                                results[structured(await c.call_tool("search_whoami", {}))] += 1
                        except Exception as exc:  # any failure is what the test is about
                            failures.append(repr(exc))

                tasks = [asyncio.create_task(caller(slow=i < 4)) for i in range(16)]
                try:
                    await eventually(
                        lambda: results["v1"] >= 30 and results["v1-slow"] >= 4, within=20
                    )
                    async with httpx.AsyncClient() as admin:
                        response = await admin.post(
                            f"{base}/admin/upstreams/search/attach",
                            json={"url": v2, "version": "v2"},
                            timeout=30,
                        )
                    assert response.status_code == 200, response.text
                    assert response.json()["upstream"]["version"] == "v2"
                    before = results["v2"]
                    await eventually(
                        lambda: results["v2"] >= before + 30 and results["v2-slow"] >= 4,
                        within=20,
                    )
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
                assert failures == []
                assert results["v1"] > 0 and results["v2"] > 0
                # after the swap every new call answers from v2
                for _ in range(5):
                    assert structured(await c.call_tool("search_whoami", {})) == "v2"
            rows = gw.upstreams()
            assert [(r["namespace"], r["version"]) for r in rows] == [("search", "v2")]
