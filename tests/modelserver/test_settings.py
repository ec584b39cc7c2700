"""The ``model-server`` settings, the factory's start-up checks, and loading failures."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from microhive.config import MeshConfig, ServiceSpec
from microhive.errors import ConfigError
from microhive.modelserver.catalog import DEFAULT_MODEL
from microhive.modelserver.engine import LlamaEngine, ModelLoadError
from microhive.modelserver.service import create_service, prepare_model
from microhive.modelserver.settings import parse_settings
from microhive.service import ServiceContext


@pytest.fixture(autouse=True)
def empty_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("MICROHIVE_MODEL_DIR", str(folder))
    return folder


def test_defaults(empty_model_dir: Path) -> None:
    s = parse_settings({})
    assert s.model.name == DEFAULT_MODEL
    assert s.model.path == empty_model_dir / f"{DEFAULT_MODEL}.gguf"
    assert (s.alias, s.context_size, s.slots, s.threads, s.fetch) == (
        DEFAULT_MODEL,
        4096,
        1,
        1,
        False,
    )
    many = parse_settings({"slots": 2, "threads": 3, "alias": "coder", "context_size": 8192})
    assert (many.total_threads, many.alias, many.context_size) == (6, "coder", 8192)


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"context_size": "big"}, "context_size", "expected an integer between 256 and 131072"),
        ({"context_size": True}, "context_size", "expected an integer"),
        ({"context_size": 100}, "context_size", "got 100"),
        ({"slots": 0}, "slots", "expected an integer between 1 and 64"),
        ({"threads": -1}, "threads", "expected an integer between 1 and 256"),
        ({"slots": 64, "threads": 8}, "threads", "slots x threads is 512"),
        ({"fetch": "yes"}, "fetch", "expected true or false"),
        ({"alias": "has space"}, "alias", "expected a model id"),
        ({"alias": 7}, "alias", "expected a model id"),
        ({"model": 3}, "model", "expected a catalog name or a .gguf path"),
        ({"model": "gpt-4"}, "model", "unknown model 'gpt-4'"),
        ({"sha256": "a" * 64}, "sha256", "only for a .gguf path"),
        ({"model": "x.gguf", "fetch": True}, "fetch", "only a catalog model can be fetched"),
        ({"modle": "x.gguf"}, None, "unknown keys modle"),
    ],
)
def test_bad_settings_name_the_key(
    settings: dict[str, Any], field: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_settings(settings, where="services.llm.settings", file="mesh.yaml")
    expected = "services.llm.settings" + (f".{field}" if field else "")
    assert caught.value.field == expected
    assert str(caught.value).startswith(f"mesh.yaml: {expected}: ")


def _context(tmp_path: Path, settings: dict[str, Any]) -> ServiceContext:
    spec = ServiceSpec(kind="model-server", settings=settings)
    mesh = MeshConfig(services={"llm": spec})
    return ServiceContext(name="llm", spec=spec, mesh=mesh, config_path=tmp_path / "microhive.yaml")


def test_a_missing_catalog_model_fails_with_the_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        create_service(_context(tmp_path, {}))
    assert caught.value.field == "services.llm.settings.model"
    assert f"fetch it with: microhive model fetch {DEFAULT_MODEL}" in str(caught.value)


def test_a_missing_gguf_path_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the model file .*weights/m\.gguf does not exist"):
        create_service(_context(tmp_path, {"model": "weights/m.gguf"}))


def test_fetch_true_defers_the_missing_model_to_start_up(tmp_path: Path) -> None:
    service = create_service(_context(tmp_path, {"fetch": True}))
    assert service.name == "llm"


def test_serve_names_the_fetch_command_in_one_line(tmp_path: Path, empty_model_dir: Path) -> None:
    (tmp_path / "microhive.yaml").write_text(
        "services:\n  llm:\n    kind: model-server\n    settings: {threads: 1}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "microhive", "serve", "llm", "-f", "microhive.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "microhive model fetch" in line]
    assert len(lines) == 1, done.stderr
    assert f"microhive model fetch {DEFAULT_MODEL}" in lines[0]


def test_prepare_model_checks_the_sha256(tmp_path: Path) -> None:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"not really a model")
    right = hashlib.sha256(b"not really a model").hexdigest()

    prepare_model(parse_settings({"model": str(weights), "sha256": right}))
    prepare_model(parse_settings({"model": str(weights)}))  # no sha256: loaded unverified
    with pytest.raises(ModelLoadError, match=f"is {right}, expected {'0' * 64}"):
        prepare_model(parse_settings({"model": str(weights), "sha256": "0" * 64}))


def test_prepare_model_refuses_a_corrupt_catalog_model(empty_model_dir: Path) -> None:
    empty_model_dir.mkdir()
    (empty_model_dir / f"{DEFAULT_MODEL}.gguf").write_bytes(b"truncated")
    with pytest.raises(
        ModelLoadError, match=f"delete it and run: microhive model fetch {DEFAULT_MODEL}"
    ):
        prepare_model(parse_settings({}))


async def test_llama_cpp_refuses_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF? no: just text")
    engine = LlamaEngine(parse_settings({"model": str(weights)}))
    with pytest.raises(ModelLoadError, match=r"llama.cpp could not load .*m\.gguf"):
        await engine.load()
    assert not engine.loaded
