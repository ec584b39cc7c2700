"""Fault isolation: a killed or hanging tool service fails fast; other tools keep working."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

from microhive.mcp.gateway import GatewaySettings
from microhive.mcp.registry import UpstreamSpec
from microhive.mcp.resilience import ResiliencePolicy

from .harness import (
    client,
    eventually,
    free_port,
    gateway,
    structured,
    upstream,
    upstream_process,
)


def settings(**policy: float) -> GatewaySettings:
    return GatewaySettings(
        resilience=ResiliencePolicy(**policy),  # type: ignore[arg-type]
        health_interval=3600,
        refresh_ttl=3600,
    )


async def test_killed_upstream_opens_its_breaker_and_others_answer() -> None:
    port = free_port()
    policy = settings(timeout=5, retries=1, failure_threshold=2, cooldown=0.5, backoff_base=0.01)
    async with upstream_process("v1", port) as (calc_url, proc), upstream("w1") as web_url:
        specs = [UpstreamSpec("calc", calc_url), UpstreamSpec("web", web_url)]
        async with gateway(specs, settings=policy) as (gw, base), client(f"{base}/mcp") as c:
            assert structured(await c.call_tool("calc_add", {"a": 1, "b": 2})) == 3
            proc.send_signal(signal.SIGKILL)
            proc.wait()

            errors = []
            for _ in range(3):
                started = time.monotonic()
                result = await c.call_tool("calc_add", {"a": 1, "b": 2})
                assert result.is_error
                assert time.monotonic() - started < 5  # a clear error, not a hang
                errors.append(result.content[0].text)
            assert errors[0].startswith("service_unavailable")
            assert "circuit breaker open" in errors[-1]
            health = {row["namespace"]: row["health"] for row in gw.upstreams()}
            assert health["calc"].startswith("breaker-")
            assert health["web"] == "healthy"
            # the other namespace answers normally
            assert structured(await c.call_tool("web_add", {"a": 20, "b": 22})) == 42

            # the service comes back on its port: after the cool-down one probe closes the breaker
            async with upstream_process("v2", port):
                answers: list[object] = []

                async def recovered() -> bool:
                    result = await c.call_tool("calc_whoami", {})
                    answers.append(result)
                    return not result.is_error

                await eventually(recovered, within=20)
                assert structured(answers[-1]) == "v2"
                assert {r["namespace"]: r["breaker"] for r in gw.upstreams()}["calc"] == "closed"


async def test_hanging_tool_times_out_while_others_answer() -> None:
    policy = settings(timeout=0.5, retries=0, failure_threshold=5)
    async with (
        upstream() as url,
        gateway([UpstreamSpec("calc", url)], settings=policy) as (_, base),
        client(f"{base}/mcp") as c,
    ):

        async def hang() -> str:
            result = await c.call_tool("calc_slow", {"seconds": 30})
            assert result.is_error
            return str(result.content[0].text)

        async def others() -> list[int]:
            return [structured(await c.call_tool("calc_add", {"a": i, "b": 1})) for i in range(5)]

        started = time.monotonic()
        text, sums = await asyncio.gather(hang(), others())
        assert text.startswith("timeout")
        assert time.monotonic() - started < 10
        assert sums == [1, 2, 3, 4, 5]


async def test_health_checks_notice_a_dead_upstream_without_calls() -> None:
    fast = GatewaySettings(health_interval=0.1, refresh_ttl=3600)
    async with (
        upstream_process("v1") as (url, proc),
        gateway([UpstreamSpec("calc", url)], settings=fast) as (gw, _),
    ):
        assert gw.upstreams()[0]["health"] == "healthy"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await eventually(lambda: gw.upstreams()[0]["health"] == "unhealthy", within=15)
        assert gw.upstreams()[0]["calls"] == 0


async def test_upstream_that_never_answers_does_not_block_start_or_others() -> None:
    policy = GatewaySettings(
        connect_timeout=0.5, resilience=ResiliencePolicy(timeout=0.5, retries=0), refresh_ttl=3600
    )
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        async with upstream() as url:
            specs = [UpstreamSpec("calc", url), UpstreamSpec("stuck", silent_url)]
            started = time.monotonic()
            async with gateway(specs, settings=policy) as (gw, base), client(f"{base}/mcp") as c:
                assert time.monotonic() - started < 10
                names = {t.name for t in (await c.list_tools()).tools}
                assert "calc_add" in names and not any(n.startswith("stuck_") for n in names)
                assert structured(await c.call_tool("calc_add", {"a": 1, "b": 1})) == 2
                health = {r["namespace"]: r["health"] for r in gw.upstreams()}
                assert health["calc"] == "healthy" and health["stuck"] != "healthy"
