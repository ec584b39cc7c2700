"""Function tools served over real streamable HTTP and called with the official SDK client."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.types import CallToolResult

from microhive.context import CallContext
from microhive.errors import NotFound, UsageError
from microhive.mcp.server import ToolService, tool_service
from microhive.mcp.services import load_tool_service

from .conftest import serve


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: the first addend
        b: the second addend
    """
    return a + b


async def shout(text: str, times: int = 1) -> str:
    """Upper-case a text, repeated."""
    return " ".join([text.upper()] * times)


def make_service() -> ToolService:
    svc = ToolService("demo", version="1.2.3")
    svc.add_function(add, read_only=True, idempotent=True, destructive=False)
    svc.add_function(shout)

    @svc.tool(destructive=True, title="Explode")
    def explode(why: str) -> str:
        """Always fails."""
        raise ValueError(f"boom: {why}")

    @svc.tool
    def lookup(key: str) -> str:
        """Fails with one of our errors."""
        raise NotFound(f"no entry {key!r}")

    @svc.tool(read_only=True)
    async def context_seen() -> dict[str, Any]:
        """Reports the call context the tool runs under."""
        ctx = CallContext.current()
        return {"hops": ctx.hops, "deadline": ctx.deadline, "trace_id": ctx.trace_id}

    @svc.tool
    def sync_context_seen() -> int:
        """The hops seen from a sync tool (run in a worker thread)."""
        return CallContext.current().hops

    return svc


@pytest.fixture
async def url() -> Any:
    with serve(make_service().asgi_app()) as base:
        yield base + "/mcp"


async def test_tools_listed_with_schemas_and_annotations(url: str) -> None:
    async with Client(url) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"add", "shout", "explode", "lookup", "context_seen", "sync_context_seen"}
    schema = tools["add"].input_schema
    assert schema["required"] == ["a", "b"]
    assert schema["properties"]["a"]["type"] == "number"
    assert schema["properties"]["a"]["description"] == "the first addend"
    assert tools["add"].description == "Add two numbers."
    ann = tools["add"].annotations
    assert ann is not None
    assert (ann.read_only_hint, ann.idempotent_hint, ann.destructive_hint) == (True, True, False)
    explode_ann = tools["explode"].annotations
    assert explode_ann is not None and explode_ann.destructive_hint is True
    assert explode_ann.title == "Explode"
    assert tools["shout"].annotations is None
    assert "times" not in tools["shout"].input_schema.get("required", [])
    assert tools["add"].output_schema is not None


async def test_sync_and_async_tools_are_called(url: str) -> None:
    async with Client(url) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3.5})
        assert not result.is_error
        assert result.structured_content == {"result": 5.5}
        result = await client.call_tool("shout", {"text": "hi", "times": 2})
        assert _text(result) == "HI HI"


async def test_raising_tool_is_a_tool_error_and_server_keeps_answering(url: str) -> None:
    async with Client(url) as client:
        result = await client.call_tool("explode", {"why": "testing"})
        assert result.is_error
        assert "ValueError: boom: testing" in _text(result)
        result = await client.call_tool("lookup", {"key": "k"})
        assert result.is_error
        assert "not_found: no entry 'k'" in _text(result)
        bad = await client.call_tool("add", {"a": "not a number", "b": 1})
        assert bad.is_error and "a" in _text(bad)
        ok = await client.call_tool("add", {"a": 1, "b": 1})
        assert not ok.is_error and ok.structured_content == {"result": 2}


async def test_call_context_from_meta_is_active_in_tools(url: str) -> None:
    ctx = CallContext.new(max_hops=7, timeout=60)
    async with Client(url) as client:
        result = await client.call_tool("context_seen", {}, meta=ctx.to_meta())
        seen = result.structured_content
        assert seen is not None
        assert seen["hops"] == 7
        assert seen["deadline"] == pytest.approx(ctx.deadline)
        result = await client.call_tool("sync_context_seen", {}, meta=ctx.to_meta())
        assert result.structured_content == {"result": 7}


async def test_exhausted_context_is_refused_with_a_clear_tool_error(url: str) -> None:
    async with Client(url) as client:
        no_hops = await client.call_tool("add", {"a": 1, "b": 1}, meta={"io.microhive/hops": 0})
        assert no_hops.is_error and "hop_limit" in _text(no_hops)
        late = await client.call_tool(
            "add", {"a": 1, "b": 1}, meta={"io.microhive/deadline": time.time() - 5}
        )
        assert late.is_error and "deadline_exceeded" in _text(late)
        broken = await client.call_tool("add", {"a": 1, "b": 1}, meta={"io.microhive/hops": "x"})
        assert broken.is_error and "invalid_context" in _text(broken)
        assert not (await client.call_tool("add", {"a": 1, "b": 1})).is_error


async def test_malformed_json_rpc_and_oversized_requests_get_errors() -> None:
    svc = make_service()
    with serve(svc.asgi_app(max_body_bytes=2048)) as base:
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        async with httpx.AsyncClient(base_url=base, headers=headers) as http:
            broken = await http.post("/mcp", content=b"{not json")
            assert broken.status_code == 400
            assert broken.json()["error"]["code"] == -32700
            not_rpc = await http.post("/mcp", json={"hello": "world"})
            assert 400 <= not_rpc.status_code < 500
            huge = await http.post("/mcp", content=b"{" + b" " * 10_000 + b"}")
            assert huge.status_code == 413
        async with Client(base + "/mcp") as client:
            assert not (await client.call_tool("add", {"a": 1, "b": 2})).is_error


async def test_origin_and_token_checks() -> None:
    svc = make_service()
    app = svc.asgi_app(token="s3cret", allowed_origins=["https://ui.example:*"])
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
            headers = {"accept": "application/json, text/event-stream"}
            auth = {**headers, "authorization": "Bearer s3cret"}
            assert (await http.post("/mcp", json=body, headers=headers)).status_code == 401
            wrong = {**headers, "authorization": "Bearer nope"}
            assert (await http.post("/mcp", json=body, headers=wrong)).status_code == 401
            evil = await http.post(
                "/mcp", json=body, headers={**auth, "origin": "http://evil.example"}
            )
            assert evil.status_code == 403
            assert evil.json()["error"] == "forbidden_origin"
            rebound = {**auth, "origin": f"http://attacker.test:{base.rsplit(':', 1)[1]}"}
            assert (await http.post("/mcp", json=body, headers=rebound)).status_code == 403
            same = await http.post("/mcp", json=body, headers={**auth, "origin": base})
            assert same.status_code == 200
            listed = await http.post(
                "/mcp", json=body, headers={**auth, "origin": "https://ui.example:8443"}
            )
            assert listed.status_code == 200
            assert (await http.post("/mcp", json=body, headers=auth)).status_code == 200


def test_tool_service_one_call_and_bad_definitions() -> None:
    svc = tool_service("calc", [add, shout], read_only=["add"])
    assert svc.tool_names == ["add", "shout"]
    with pytest.raises(UsageError, match="no function named"):
        tool_service("calc", [add], idempotent=["nope"])
    with pytest.raises(UsageError, match="defined twice"):
        tool_service("calc", [add, add])
    with pytest.raises(UsageError, match="must match"):
        ToolService("x").add_function(add, name="bad name!")
    svc.mcp_server()
    with pytest.raises(UsageError, match="after the server was built"):
        svc.add_function(add, name="late")


def test_load_tool_service_from_import_paths() -> None:
    svc = load_tool_service(f"{__name__}:add,shout")
    assert svc.tool_names == ["add", "shout"]
    made = load_tool_service(f"{__name__}:make_service")
    assert "explode" in made.tool_names
    from microhive.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot import"):
        load_tool_service("no_such_module_here:fn")
    with pytest.raises(ConfigError, match="no attribute"):
        load_tool_service(f"{__name__}:missing")
