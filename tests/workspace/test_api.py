"""REST and MCP over real sockets, against the real service builder."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from microhive.context import CallContext
from microhive.service import Service
from microhive.workspace.service import build_service

from .wshelp import Server, eventually, settings

TOKEN_ENV = "MICROHIVE_TEST_WS_READER"


@pytest.fixture
async def base(
    tmp_path: Path, serve: Callable[[Any], Awaitable[Server]], monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setenv(TOKEN_ENV, "reader-token")
    cfg = settings(
        tmp_path, tokens=[{"token_env": TOKEN_ENV, "folders": ["public"], "read_only": True}]
    )
    service = build_service(Service(name="workspace"), cfg)
    server = await serve(service.asgi())
    return server.url


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base) as client:
        yield client


async def test_put_get_versions_and_preconditions(http: httpx.AsyncClient) -> None:
    url = "/v1/ws/demo/files/project/findings.json"
    created = await http.put(url, content=b'{"x": 1}', headers={"microhive-author": "researcher"})
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == '"1"'
    assert created.json()["author"] == "researcher"
    got = await http.get(url)
    assert got.content == b'{"x": 1}'
    assert got.headers["content-type"].startswith("application/json")
    updated = await http.put(url, content=b'{"x": 2}', headers={"if-match": '"1"'})
    assert updated.status_code == 200
    stale = await http.put(url, content=b'{"x": 3}', headers={"if-match": '"1"'})
    assert stale.status_code == 409
    assert stale.json()["error"] == "conflict"
    assert (await http.get(url)).content == b'{"x": 2}'
    create_only = await http.put(url, content=b"{}", headers={"if-none-match": "*"})
    assert create_only.status_code == 409
    old = await http.get(url, params={"version": 1})
    assert old.content == b'{"x": 1}'
    versions = (await http.get("/v1/ws/demo/versions/project/findings.json")).json()
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    restored = await http.post("/v1/ws/demo/restore/project/findings.json", json={"version": 1})
    assert restored.json()["version"] == 3
    listing = (await http.get("/v1/ws/demo/files", params={"glob": "*.json"})).json()
    assert [i["path"] for i in listing["items"]] == ["project/findings.json"]
    gone = await http.delete(url, headers={"if-match": "3"})
    assert gone.status_code == 200
    assert (await http.get(url)).status_code == 404


async def test_idempotency_key_over_http(http: httpx.AsyncClient) -> None:
    url = "/v1/ws/demo/files/log.txt"
    headers = {"idempotency-key": "k-1"}
    a = await http.put(url, params={"append": "1"}, content=b"one\n", headers=headers)
    b = await http.put(url, params={"append": "1"}, content=b"one\n", headers=headers)
    assert a.json() == b.json()
    assert (await http.get(url)).content == b"one\n"


@pytest.mark.parametrize(
    "path",
    ["..%2Fescape", "a/%2E%2E/%2E%2E/etc/passwd", "a%5Cb", "a%00b", "cafe%CC%81.md", "a//b"],
)
async def test_path_escapes_over_http_are_400(http: httpx.AsyncClient, path: str) -> None:
    response = await http.put(f"/v1/ws/demo/files/{path}", content=b"x")
    assert response.status_code in (400, 404), response.text
    if response.status_code == 400:
        assert response.json()["error"] == "invalid_input"
    listing = (await http.get("/v1/ws/demo/files")).json()
    assert listing["items"] == []


async def test_scoped_tokens(http: httpx.AsyncClient) -> None:
    await http.put("/v1/ws/demo/files/public/a.md", content=b"open")
    await http.put("/v1/ws/demo/files/private/b.md", content=b"closed")
    reader = {"microhive-workspace-token": "reader-token"}
    assert (await http.get("/v1/ws/demo/files/public/a.md", headers=reader)).content == b"open"
    denied = await http.get("/v1/ws/demo/files/private/b.md", headers=reader)
    assert denied.status_code == 403
    write = await http.put("/v1/ws/demo/files/public/a.md", content=b"x", headers=reader)
    assert write.status_code == 403 and "read-only" in write.json()["message"]
    listing = (await http.get("/v1/ws/demo/files", headers=reader)).json()
    assert [i["path"] for i in listing["items"]] == ["public/a.md"]
    bogus = await http.get("/v1/ws/demo/files", headers={"microhive-workspace-token": "nope"})
    assert bogus.status_code == 403
    hooks = await http.get("/v1/webhooks", headers=reader)
    assert hooks.status_code == 403


async def test_search_over_http_and_openapi(http: httpx.AsyncClient) -> None:
    await http.put("/v1/ws/demo/files/n/bees.md", content=b"Honeybees make honey.")

    async def found() -> Any:
        hits = (await http.get("/v1/ws/demo/search", params={"q": "honey"})).json()["hits"]
        return hits

    hits = await eventually(found, what="the file to become searchable")
    assert hits[0]["path"] == "n/bees.md" and "**" in hits[0]["snippet"]
    doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/ws/{ws}/search" in doc["paths"]
    bad = await http.get("/v1/ws/demo/search", params={"q": ""})
    assert bad.status_code == 400


def _structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data = result.structured_content
    if data is None:
        data = json.loads(result.content[0].text)
    return data.get("result", data) if isinstance(data, dict) else data


async def test_mcp_tools(base: str) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    ctx = CallContext.from_headers({"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    async with Client(base + "/mcp") as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"list", "read", "write", "search", "info", "versions"} <= names
        written = _structured(
            await client.call_tool(
                "write",
                {"path": "p/report.md", "content": "# Report\nThe hive is healthy."},
                meta=ctx.to_meta(),
            )
        )
        assert written["version"] == 1 and written["trace_id"] == trace_id
        read = _structured(await client.call_tool("read", {"path": "p/report.md"}))
        assert read["text"].startswith("# Report")
        stale = await client.call_tool(
            "write", {"path": "p/report.md", "content": "x", "expected_version": 0}
        )
        assert stale.is_error
        listed = _structured(await client.call_tool("list", {"folder": "p"}))
        assert [i["path"] for i in listed["items"]] == ["p/report.md"]
        versions = _structured(await client.call_tool("versions", {"path": "p/report.md"}))
        assert len(versions["versions"]) == 1
        escape = await client.call_tool("read", {"path": "../etc/passwd"})
        assert escape.is_error

        async def searched() -> Any:
            hits = _structured(await client.call_tool("search", {"query": "hive healthy"}))
            return hits["hits"]

        hits = await eventually(searched, what="MCP search to find the report")
        assert hits[0]["path"] == "p/report.md"


async def test_too_large_is_413_and_foreign_origins_are_refused(
    tmp_path: Path, serve: Callable[..., Awaitable[Server]]
) -> None:
    service = build_service(Service(name="workspace"), settings(tmp_path, max_file_bytes=1000))
    server = await serve(service.asgi())
    async with httpx.AsyncClient(base_url=server.url) as http:
        big = await http.put("/v1/ws/demo/files/big.bin", content=b"x" * 1001)
        assert big.status_code == 413 and big.json()["error"] == "too_large"
        assert "limit is 1000" in big.json()["message"]
        evil = await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"origin": "http://evil.example", "accept": "application/json"},
        )
        assert evil.status_code == 403
