"""REST/OpenAPI services wrapped as MCP tools: the calculator pair end to end, over real sockets."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.types import CallToolResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from microhive.config import MeshConfig
from microhive.errors import ConfigError, InvalidInput
from microhive.mcp.openapi import OpenApiTools, openapi_tools, sanitize_tool_name
from microhive.service import ServiceContext
from microhive.tools import calculator
from microhive.tools.calculator import evaluate

from .conftest import serve


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def _mesh(tmp_path: Path, settings: dict[str, Any], rest_port: int | None = None) -> MeshConfig:
    services: dict[str, Any] = {
        "calc-rest": {"kind": "calculator-rest", "port": rest_port},
        "calculator": {"kind": "openapi-tools", "settings": settings, "depends_on": ["calc-rest"]},
    }
    return MeshConfig.model_validate({"services": services})


@pytest.fixture
def rest_url(tmp_path: Path) -> Any:
    mesh = _mesh(tmp_path, {"openapi_url": "http://unused"})
    ctx = ServiceContext.from_mesh(mesh, "calc-rest", config_path=tmp_path / "microhive.yaml")
    with serve(calculator.create_service(ctx)) as base:
        yield base


async def test_calculator_rest_publishes_its_openapi_document(rest_url: str) -> None:
    async with httpx.AsyncClient(base_url=rest_url) as http:
        doc = (await http.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.")
        assert {"/add", "/divide", "/sqrt", "/evaluate"} <= set(doc["paths"])
        assert (await http.post("/add", json={"a": 2, "b": 3})).json() == {"result": 5}
        assert (await http.get("/healthz")).status_code == 200
        bad = await http.post("/divide", json={"a": 1, "b": 0})
        assert bad.status_code == 400 and "division by zero" in bad.json()["message"]


async def test_calculator_wrapped_as_mcp_end_to_end(rest_url: str, tmp_path: Path) -> None:
    from microhive.mcp.openapi import create_service

    mesh = _mesh(tmp_path, {"openapi_url": f"{rest_url}/openapi.json", "timeout": 5})
    ctx = ServiceContext.from_mesh(mesh, "calculator", config_path=tmp_path / "microhive.yaml")
    with serve(create_service(ctx)) as base:
        async with Client(base + "/mcp") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {
                "add",
                "subtract",
                "multiply",
                "divide",
                "power",
                "sqrt",
                "evaluate",
            }
            add = tools["add"]
            assert add.input_schema["required"] == ["a", "b"]
            assert add.input_schema["properties"]["a"]["type"] == "number"
            assert add.annotations is not None and add.annotations.read_only_hint is True
            assert tools["sqrt"].input_schema["properties"]["x"]["description"]

            result = await client.call_tool("add", {"a": 2, "b": 40})
            assert not result.is_error and result.structured_content == {"result": 42}
            result = await client.call_tool("sqrt", {"x": 81})
            assert result.structured_content == {"result": 9.0}
            result = await client.call_tool("evaluate", {"expression": "2 * (3 + 4) ** 2"})
            assert result.structured_content == {"result": 98}

            failed = await client.call_tool("divide", {"a": 1, "b": 0})
            assert failed.is_error
            assert "HTTP 400" in _text(failed) and "division by zero" in _text(failed)
            invalid = await client.call_tool("add", {"a": "two", "b": 1})
            assert invalid.is_error and "invalid arguments" in _text(invalid)
            again = await client.call_tool("multiply", {"a": 6, "b": 7})
            assert again.structured_content == {"result": 42}
        async with httpx.AsyncClient() as http:
            assert (await http.get(base + "/healthz")).status_code == 200


async def test_upstream_setting_reads_the_port_file(rest_url: str, tmp_path: Path) -> None:
    from microhive.mcp.openapi import create_service

    mesh = _mesh(tmp_path, {"upstream": "calc-rest"})
    ctx = ServiceContext.from_mesh(mesh, "calculator", config_path=tmp_path / "microhive.yaml")
    with pytest.raises(ConfigError, match="cannot find the port"):
        create_service(ctx)
    ports = tmp_path / ".microhive" / "ports"
    ports.mkdir(parents=True)
    (ports / "calc-rest-0.port").write_text(rest_url.rsplit(":", 1)[1])
    with serve(create_service(ctx)) as base:
        async with Client(base + "/mcp") as client:
            result = await client.call_tool("power", {"a": 2, "b": 10})
            assert result.structured_content == {"result": 1024}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Pets", "version": "2.0"},
    "paths": {
        "/pets/{petId}": {
            "parameters": [{"$ref": "#/components/parameters/PetId"}],
            "get": {
                "summary": "Get a pet",
                "parameters": [
                    {"name": "verbose", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "X-Request-Tag", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "ok"}},
            },
            "put": {
                "operationId": "replace pet/by id!",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}
                    },
                },
                "responses": {"200": {"description": "ok"}},
            },
            "delete": {"operationId": "deletePet", "responses": {"204": {"description": "gone"}}},
        },
        "/slow": {"get": {"operationId": "slow", "responses": {"200": {"description": "ok"}}}},
    },
    "components": {
        "parameters": {
            "PetId": {
                "name": "petId",
                "in": "path",
                "required": True,
                "schema": {"type": "integer"},
            }
        },
        "schemas": {
            "Pet": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "example": "Rex"},
                    "tag": {"type": "string", "nullable": True},
                    "parent": {"$ref": "#/components/schemas/Pet"},
                },
            }
        },
    },
}


def _pets_app(release: threading.Event) -> Starlette:
    async def get_pet(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "id": int(request.path_params["pet_id"]),
                "verbose": request.query_params.get("verbose"),
                "tag": request.headers.get("x-request-tag"),
                "hops": request.headers.get("microhive-hops"),
            }
        )

    async def put_pet(request: Request) -> JSONResponse:
        return JSONResponse({"id": int(request.path_params["pet_id"]), **(await request.json())})

    async def delete_pet(request: Request) -> JSONResponse:
        return JSONResponse({"error": "locked"}, status_code=409)

    def slow(request: Request) -> JSONResponse:
        release.wait(10)
        return JSONResponse({})

    return Starlette(
        routes=[
            Route("/pets/{pet_id}", get_pet, methods=["GET"]),
            Route("/pets/{pet_id}", put_pet, methods=["PUT"]),
            Route("/pets/{pet_id}", delete_pet, methods=["DELETE"]),
            Route("/slow", slow, methods=["GET"]),
        ]
    )


def test_operations_become_tool_schemas() -> None:
    tools = OpenApiTools(SPEC, "http://127.0.0.1:1")
    ops = {op.name: op for op in tools.operations}
    assert set(ops) == {"get_pets_petId", "replace_pet_by_id", "deletePet", "slow"}
    get = ops["get_pets_petId"]
    assert get.input_schema["required"] == ["petId"]
    assert set(get.input_schema["properties"]) == {"petId", "verbose", "x_request_tag"}
    assert get.annotations == {"read_only": True, "idempotent": True}
    put = ops["replace_pet_by_id"]
    props = put.input_schema["properties"]
    assert set(props) == {"petId", "name", "tag", "parent"}
    assert props["tag"]["type"] == ["string", "null"]
    assert "example" not in props["name"]
    assert "recursive" in props["parent"]["description"]
    assert put.input_schema["required"] == ["petId", "name"]
    assert ops["deletePet"].annotations == {"idempotent": True, "destructive": True}


def test_tool_names_are_sanitised() -> None:
    assert sanitize_tool_name("get /a/{b}") == "get_a_b"
    long = sanitize_tool_name("x" * 100)
    assert len(long) <= 64
    assert sanitize_tool_name("same", taken=["same"]) != "same"
    with pytest.raises(ConfigError, match="OpenAPI 3"):
        OpenApiTools({"swagger": "2.0", "paths": {}}, "http://x")
    with pytest.raises(ConfigError, match="base_url"):
        OpenApiTools(SPEC)


async def test_parameters_headers_errors_and_timeouts_over_http() -> None:
    release = threading.Event()
    with serve(_pets_app(release)) as base:
        svc = openapi_tools(SPEC, base, name="pets", timeout=30.0)
        impatient = openapi_tools(SPEC, base, name="pets", timeout=0.5, include=["slow"])
        try:
            with serve(svc.asgi_app()) as mcp_base:
                async with Client(mcp_base + "/mcp") as client:
                    got = await client.call_tool(
                        "get_pets_petId",
                        {"petId": 7, "verbose": True, "x_request_tag": "t1"},
                        meta={"io.microhive/hops": 5},
                    )
                    assert got.structured_content == {
                        "id": 7,
                        "verbose": "true",
                        "tag": "t1",
                        "hops": "4",
                    }
                    put = await client.call_tool(
                        "replace_pet_by_id", {"petId": 3, "name": "Rex", "tag": None}
                    )
                    assert put.structured_content == {"id": 3, "name": "Rex", "tag": None}
                    gone = await client.call_tool("deletePet", {"petId": 3})
                    assert gone.is_error
                    assert "HTTP 409" in _text(gone) and "locked" in _text(gone)
                    async with impatient, Client(impatient.mcp_server()) as hurried:
                        slow = await hurried.call_tool("slow", {})
                    assert slow.is_error and "timed out" in _text(slow)
                    still = await client.call_tool("get_pets_petId", {"petId": 1})
                    assert not still.is_error
        finally:
            release.set()


async def test_unreachable_upstream_is_a_tool_error() -> None:
    svc = openapi_tools(SPEC, "http://127.0.0.1:9", name="pets", timeout=2.0)
    async with svc, Client(svc.mcp_server()) as client:
        result = await client.call_tool("get_pets_petId", {"petId": 1})
    assert result.is_error and "cannot reach" in _text(result)


def test_safe_expression_evaluator() -> None:
    assert evaluate("1 + 2 * 3") == 7
    assert evaluate("sqrt(16) + abs(-2) + max(1, 5)") == 11
    assert evaluate("-(2 ** 3) // 3") == -3
    for bad, why in [
        ("__import__('os')", "unknown function"),
        ("__import__('os').system('true')", "unsupported syntax"),
        ("().__class__", "unsupported syntax"),
        ("9 ** 9 ** 9", "too large"),
        ("1 / 0", "division by zero"),
        ("x + 1", "unknown name"),
        ("'a' * 3", "unsupported constant"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 600, "longer than"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            evaluate(bad)
