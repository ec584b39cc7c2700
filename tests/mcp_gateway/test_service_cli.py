"""The ``gateway`` service kind from a mesh file, and ``microhive tools`` against it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from microhive.cli.tools import app as tools_app
from microhive.config import parse_config
from microhive.mcp.gateway import create_service
from microhive.service import ServiceContext

from .harness import client, free_port, serving, structured, upstream

MESH = """
name: t
roles:
  researcher: {{tools: ["calc.add"], token_env: T_RESEARCHER}}
services:
  calc: {{kind: tool, port: {calc_port}, settings: {{mcp: true}}}}
  gateway: {{kind: gateway, port: {gw_port}, settings: {{refresh_ttl: 30}}}}
"""


async def test_gateway_service_from_mesh_and_cli(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_RESEARCHER", "research-token")
    gw_port = free_port()
    async with upstream("v1") as calc_url, upstream("v2") as v2:
        calc_port = int(calc_url.split(":")[2].split("/")[0])
        mesh = parse_config(MESH.format(calc_port=calc_port, gw_port=gw_port))
        ctx = ServiceContext(
            name="gateway",
            spec=mesh.services["gateway"],
            mesh=mesh,
            port=gw_port,
            state_dir=tmp_path / ".microhive",
        )
        service = create_service(ctx)
        async with serving(service.asgi(), port=gw_port) as base:
            async with client(f"{base}/mcp", "research-token") as c:
                assert [t.name for t in (await c.list_tools()).tools] == ["calc_add"]
                assert structured(await c.call_tool("calc_add", {"a": 2, "b": 2})) == 4

            runner = CliRunner()
            listing = await asyncio.to_thread(
                runner.invoke, tools_app, ["--url", base, "--json"], catch_exceptions=False
            )
            assert listing.exit_code == 0, listing.output
            rows = json.loads(listing.output)
            assert {r["qualified"] for r in rows} >= {"calc.add", "calc.echo"}
            assert {r["health"] for r in rows} == {"healthy"}
            table = await asyncio.to_thread(runner.invoke, tools_app, ["--url", base])
            assert "calc_add" in table.output and "healthy" in table.output

            swapped = await asyncio.to_thread(
                runner.invoke,
                tools_app,
                ["--url", base, "attach", "calc", v2, "--version", "v2"],
            )
            assert swapped.exit_code == 0, swapped.output
            async with client(f"{base}/mcp", "research-token") as c:
                assert structured(await c.call_tool("calc_add", {"a": 1, "b": 2})) == 3
            bad = await asyncio.to_thread(
                runner.invoke, tools_app, ["--url", base, "approve", "calc.nope"]
            )
            assert bad.exit_code == 2 and "not held" in bad.output
        assert (tmp_path / ".microhive" / "gateway-registry.json").exists()
