"""Mesh-file errors point at the file, line and field; unknown keys are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from microhive.config import load_config, parse_config
from microhive.config.starter import STARTER_YAML
from microhive.errors import ConfigError

GOOD = """\
name: t
services:
  api:
    kind: app
    app: pkg.mod:make
    port: 8100
    replicas: 2
  worker:
    kind: command
    command: [python, -m, http.server, "{port}"]
    depends_on: [api]
"""


def test_a_good_file_loads() -> None:
    mesh = parse_config(GOOD, file="m.yaml")
    assert mesh.services["api"].ports() == [8100, 8101]
    assert mesh.start_order() == ["api", "worker"]
    assert mesh.host == "127.0.0.1"


def test_the_starter_file_is_valid() -> None:
    mesh = parse_config(STARTER_YAML, file="microhive.yaml")
    assert "researcher" in mesh.roles


def _error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="m.yaml", env=env)
    return info.value


def test_unknown_key_names_line_and_field() -> None:
    err = _error(GOOD.replace("    replicas: 2", "    replicaz: 2"))
    assert err.line == 7
    assert err.field == "services.api.replicaz"
    assert "unknown key" in str(err)
    assert str(err).startswith("m.yaml:7: services.api.replicaz:")


def test_wrong_type_says_what_was_expected() -> None:
    err = _error(GOOD.replace("port: 8100", "port: http"))
    assert (err.line, err.field) == (6, "services.api.port")
    assert "integer" in str(err) and "'http'" in str(err)


def test_out_of_range_value() -> None:
    err = _error(GOOD.replace("port: 8100", "port: 70000"))
    assert err.field == "services.api.port" and "65535" in str(err)


def test_unknown_kind_lists_the_known_ones() -> None:
    err = _error(GOOD.replace("kind: app", "kind: lambda"))
    assert err.field == "services.api.kind" and "expected one of" in str(err)


def test_cross_references_point_at_their_line() -> None:
    err = _error(GOOD.replace("depends_on: [api]", "depends_on: [db]"))
    assert (err.line, err.field) == (11, "services.worker.depends_on")
    assert "no service named 'db'" in str(err)


def test_dependency_cycle_is_refused() -> None:
    text = GOOD.replace("    port: 8100\n", "    port: 8100\n    depends_on: [worker]\n")
    assert "cycle" in str(_error(text))


def test_colliding_replica_ports() -> None:
    text = GOOD.replace("    depends_on: [api]", "    port: 8101")
    err = _error(text)
    assert err.field == "services.worker.port" and "8101" in str(err)


def test_invalid_yaml_gives_the_line() -> None:
    err = _error("services:\n  api: [unclosed\n")
    assert err.line is not None and "not valid YAML" in str(err)


def test_duplicate_keys_are_refused() -> None:
    err = _error("name: a\nname: b\n")
    assert err.line == 2 and "duplicate key" in str(err)


def test_top_level_must_be_a_mapping() -> None:
    assert "mapping" in str(_error("- a\n- b\n"))


def test_env_override_sets_a_typed_value() -> None:
    mesh = parse_config(GOOD, env={"MICROHIVE__SERVICES__API__PORT": "9000"})
    assert mesh.services["api"].port == 9000


def test_env_override_creates_missing_levels() -> None:
    mesh = parse_config(GOOD, env={"MICROHIVE__BUS__URL": "nats://127.0.0.1:4222"})
    assert mesh.bus.url == "nats://127.0.0.1:4222"


def test_bad_env_override_names_the_variable() -> None:
    err = _error(GOOD, env={"MICROHIVE__SERVICES__API__REPLICAS": "many"})
    assert "MICROHIVE__SERVICES__API__REPLICAS" in str(err)
    assert err.field == "services.api.replicas"


def test_plain_microhive_settings_are_not_overrides() -> None:
    parse_config(GOOD, env={"MICROHIVE_REQUIRE_SERVICES": "1"})


def test_interpolation_and_defaults() -> None:
    text = "bus:\n  url: ${BUS_URL:-embedded://x}\nname: ${NAME}\n"
    mesh = parse_config(text, env={"NAME": "hive"})
    assert (mesh.bus.url, mesh.name) == ("embedded://x", "hive")
    err = _error(text)
    assert err.line == 3 and "NAME is not set" in str(err)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="microhive init"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "microhive.yaml"
    path.write_text(GOOD)
    assert load_config(path, env={}).name == "t"
