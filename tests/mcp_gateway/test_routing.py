"""Namespaced listing, role allowlists, and the call context through the gateway."""

from __future__ import annotations

import time

import httpx
import pytest

from microhive.context import CallContext
from microhive.mcp.gateway import GatewaySettings
from microhive.mcp.registry import UpstreamSpec
from microhive.mcp.resilience import ResiliencePolicy

from .harness import client, gateway, structured, upstream

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ROLES = {
    "researcher": ("tok-researcher", ("calc.*", "web.echo")),
    "writer": ("tok-writer", ("web.whoami",)),
}


async def test_tools_are_listed_under_namespaced_names() -> None:
    async with upstream("v1") as calc_url, upstream("v1") as web_url:
        specs = [UpstreamSpec("calc", calc_url), UpstreamSpec("web", web_url)]
        async with gateway(specs) as (_, base), client(f"{base}/mcp") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"calc_add", "calc_echo", "web_add", "web_whoami"} <= names
            tool = next(t for t in (await c.list_tools()).tools if t.name == "calc_add")
            assert tool.meta is not None
            assert tool.meta["io.microhive/qualified-name"] == "calc.add"
            assert tool.annotations is not None and tool.annotations.read_only_hint
            assert structured(await c.call_tool("calc_add", {"a": 2, "b": 3})) == 5


async def test_role_sees_and_calls_only_its_tools() -> None:
    async with upstream() as calc_url, upstream() as web_url:
        specs = [UpstreamSpec("calc", calc_url), UpstreamSpec("web", web_url)]
        async with gateway(specs, roles=ROLES) as (_, base):
            async with client(f"{base}/mcp", "tok-researcher") as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert {n for n in names if not n.startswith("calc_")} == {"web_echo"}
                assert {"calc_add", "calc_echo", "calc_whoami"} <= names
                assert structured(await c.call_tool("calc_add", {"a": 1, "b": 1})) == 2
                refused = await c.call_tool("web_whoami", {})
                assert refused.is_error
                assert "not allowed for role 'researcher'" in refused.content[0].text
            async with client(f"{base}/mcp", "tok-writer") as c:
                assert {t.name for t in (await c.list_tools()).tools} == {"web_whoami"}
                assert (await c.call_tool("calc_add", {"a": 1, "b": 1})).is_error


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_unknown_token_is_401(token: str | None) -> None:
    async with upstream() as url, gateway([UpstreamSpec("calc", url)], roles=ROLES) as (_, base):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{base}/mcp", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


async def test_hops_are_decremented_and_trace_kept() -> None:
    async with upstream() as url, gateway([UpstreamSpec("calc", url)]) as (_, base):
        ctx = CallContext.new(timeout=30.0)
        meta = ctx.to_meta()
        meta["io.example/custom"] = "kept"
        meta["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        async with client(f"{base}/mcp") as c:
            got = structured(await c.call_tool("calc_echo", {"text": "hi"}, meta=meta))
        received = got["meta"]
        assert received["io.microhive/hops"] == ctx.hops - 1
        assert received["io.microhive/max-hops"] == ctx.max_hops
        assert received["io.microhive/deadline"] == pytest.approx(ctx.deadline)
        assert received["io.example/custom"] == "kept"
        assert received["traceparent"].split("-")[1] == TRACE_ID


async def test_expired_deadline_is_not_forwarded() -> None:
    async with upstream() as url, gateway([UpstreamSpec("calc", url)]) as (gw, base):
        meta = {"io.microhive/deadline": time.time() - 1, "io.microhive/hops": 5}
        async with client(f"{base}/mcp") as c:
            result = await c.call_tool("calc_echo", {"text": "late"}, meta=meta)
            assert result.is_error
            assert "deadline" in result.content[0].text
            hop_out = await c.call_tool("calc_echo", {"text": "x"}, meta={"io.microhive/hops": 0})
            assert hop_out.is_error and "hop" in hop_out.content[0].text
        assert gw.upstreams()[0]["calls"] == 0  # neither call reached the upstream


async def test_malformed_and_oversized_requests_get_errors_and_gateway_stays_up() -> None:
    async with (
        upstream() as url,
        gateway([UpstreamSpec("calc", url)], max_body_bytes=4096) as (_, base),
    ):
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        async with httpx.AsyncClient() as http:
            bad_json = await http.post(f"{base}/mcp", content=b"{not json", headers=headers)
            assert bad_json.status_code == 400
            not_rpc = await http.post(f"{base}/mcp", json={"hello": "world"}, headers=headers)
            assert not_rpc.status_code >= 400
            big = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "calc_echo", "arguments": {"text": "x" * 100_000}},
            }
            too_big = await http.post(f"{base}/mcp", json=big, headers=headers)
            assert too_big.status_code == 413
        async with client(f"{base}/mcp") as c:
            assert structured(await c.call_tool("calc_add", {"a": 20, "b": 22})) == 42


async def test_bad_arguments_are_tool_errors_and_do_not_trip_the_breaker() -> None:
    settings = GatewaySettings(resilience=ResiliencePolicy(failure_threshold=2, retries=0))
    async with (
        upstream() as url,
        gateway([UpstreamSpec("calc", url)], settings=settings) as (gw, base),
        client(f"{base}/mcp") as c,
    ):
        for _ in range(4):
            result = await c.call_tool("calc_add", {"a": "not a number", "b": 1})
            assert result.is_error
        assert gw.upstreams()[0]["breaker"] == "closed"
        assert structured(await c.call_tool("calc_add", {"a": 1, "b": 1})) == 2
        unknown = await c.call_tool("calc_nope", {})
        assert unknown.is_error and "unknown tool" in unknown.content[0].text
