"""The registry's view of a mesh file, and its validation of runtime input."""

from __future__ import annotations

from pathlib import Path

import pytest

from microhive.config import parse_config
from microhive.errors import ConfigError, InvalidInput
from microhive.mcp.registry import Registry, RegistryStore, UpstreamSpec, specs_from_mesh

MESH = """
services:
  web: {kind: web, port: 8711}
  calc: {kind: tool, settings: {tools: "m:f", namespace: calculator, version: v3}}
  hidden: {kind: pdf, port: 8713, settings: {gateway: false}}
  custom: {kind: app, app: "pkg.mod:create", port: 8714, settings: {mcp: true, mcp_path: /rpc}}
  plain: {kind: app, app: "pkg.mod:create", port: 8715}
  gateway:
    kind: gateway
    port: 8700
    settings:
      upstreams: [{namespace: ext, url: "http://10.0.0.5:9000/mcp"}]
"""


def test_mesh_tool_services_become_upstreams(tmp_path: Path) -> None:
    mesh = parse_config(MESH)
    (tmp_path / "ports").mkdir()
    (tmp_path / "ports" / "calc-0.port").write_text("8712")
    specs = {
        s.namespace: s for s in specs_from_mesh(mesh, mesh.services["gateway"].settings, tmp_path)
    }
    assert set(specs) == {"web", "calculator", "custom", "ext"}
    assert specs["web"].url == "http://127.0.0.1:8711/mcp"
    assert specs["calculator"].url == "http://127.0.0.1:8712/mcp"
    assert specs["calculator"].version == "v3" and specs["calculator"].service == "calc"
    assert specs["custom"].url == "http://127.0.0.1:8714/rpc"
    assert specs["ext"].source == "settings"


def test_bad_input_is_named() -> None:
    with pytest.raises(InvalidInput, match="namespace"):
        UpstreamSpec("Not OK", "http://127.0.0.1:1/mcp")
    with pytest.raises(InvalidInput, match="http"):
        UpstreamSpec("ok", "file:///etc/passwd")
    with pytest.raises(InvalidInput, match="unknown upstream field"):
        UpstreamSpec.from_dict({"namespace": "ok", "url": "http://h/mcp", "colour": 1})
    mesh = parse_config("services: {g: {kind: gateway, settings: {upstreams: [{url: x}]}}}")
    with pytest.raises(ConfigError, match=r"settings\.upstreams"):
        specs_from_mesh(mesh, mesh.services["g"].settings)


def test_unregistering_a_mesh_namespace_persists(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "r.json")
    declared = [UpstreamSpec("web", "http://127.0.0.1:1/mcp", source="mesh")]
    Registry(declared, store).unregister("web")
    assert Registry(declared, store).upstreams() == {}
    again = Registry(declared, store)
    again.register(UpstreamSpec("web", "http://127.0.0.1:2/mcp"))
    assert Registry(declared, store).get("web").url == "http://127.0.0.1:2/mcp"
