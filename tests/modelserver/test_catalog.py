"""Resolving a ``model`` setting: a catalog name or a .gguf path (with an optional sha256)."""

from __future__ import annotations

from pathlib import Path

import pytest

import microhive.modelserver as modelserver
from microhive.errors import UsageError
from microhive.modelserver.catalog import CATALOG, DEFAULT_MODEL, catalog, resolve_model

SMALL = "qwen2.5-coder-0.5b-instruct-q4_k_m"


def test_a_catalog_name_is_a_file_in_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICROHIVE_MODEL_DIR", str(tmp_path))
    model = resolve_model(SMALL)
    assert model.path == tmp_path / f"{SMALL}.gguf"
    assert model.name == SMALL
    assert model.sha256 == CATALOG[SMALL].sha256 and model.size == CATALOG[SMALL].size
    assert model.packaged is CATALOG[SMALL]
    assert not model.exists
    assert resolve_model(SMALL, model_dir=tmp_path / "other").path.parent == tmp_path / "other"


def test_a_gguf_path_is_taken_from_the_base_folder(tmp_path: Path) -> None:
    relative = resolve_model("weights/My-Model.Q4.gguf", base_dir=tmp_path)
    assert relative.path == tmp_path / "weights" / "My-Model.Q4.gguf"
    assert relative.name == "My-Model.Q4"
    assert relative.sha256 is None and relative.packaged is None

    absolute = resolve_model(str(tmp_path / "x.GGUF"), sha256="AB" * 32, base_dir="/elsewhere")
    assert absolute.path == tmp_path / "x.GGUF"
    assert absolute.sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("model", "sha256", "message"),
    [
        ("llama3", None, r"unknown model 'llama3': expected a catalog name \(qwen2\.5-coder"),
        ("weights/model.bin", None, "or a path to a .gguf file"),
        ("", None, "expected a catalog model name or a path"),
        ("m.gguf", "xyz", "'sha256' must be 64 hexadecimal digits"),
        ("m.gguf", "a" * 63, "'sha256' must be 64 hexadecimal digits"),
        (SMALL, "a" * 64, "'sha256' is only for a .gguf path"),
    ],
)
def test_bad_model_settings_say_what_is_expected(
    model: str, sha256: str | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_model(model, sha256=sha256)


def test_the_catalog_lists_every_packaged_model() -> None:
    names = [entry.name for entry in catalog()]
    assert names == sorted(CATALOG) == [SMALL, "qwen2.5-coder-1.5b-instruct-q4_k_m"]
    assert DEFAULT_MODEL == SMALL
    assert all(entry.license == "Apache-2.0" for entry in catalog())


def test_the_package_exports_what_it_lists() -> None:
    for name in modelserver.__all__:
        assert hasattr(modelserver, name), name
