"""The settings of a ``model-server`` service (``services.<name>.settings``), checked.

==================  =========================================================  ==========
key                 meaning                                                    default
==================  =========================================================  ==========
``model``           a catalog name, or a path to a ``.gguf`` file (relative:   the 0.5B
                    to the mesh file's folder)                                 catalog model
``sha256``          the expected sha256 of a ``.gguf`` path                    none
``context_size``    tokens one request may use (prompt + answer)               4096
``slots``           requests generated at the same time (parallel sequences)   1
``threads``         CPU threads per slot                                       1
``alias``           the model id in ``/v1/models`` and in requests             the catalog
                                                                               name / file stem
``fetch``           assemble a missing catalog model at start-up               false
==================  =========================================================  ==========

Every value is type-checked, unknown keys are refused, and each problem is a
:class:`~microhive.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microhive.errors import ConfigError, UsageError
from microhive.modelserver.catalog import DEFAULT_MODEL, ModelFile, resolve_model

__all__ = [
    "DEFAULT_CONTEXT_SIZE",
    "MAX_CONTEXT_SIZE",
    "MAX_SLOTS",
    "MAX_THREADS",
    "MIN_CONTEXT_SIZE",
    "ModelServerSettings",
    "parse_settings",
]

DEFAULT_CONTEXT_SIZE = 4096
MIN_CONTEXT_SIZE = 256
MAX_CONTEXT_SIZE = 131_072
MAX_SLOTS = 64
MAX_THREADS = 256

_KEYS = ("model", "sha256", "context_size", "slots", "threads", "alias", "fetch")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ModelServerSettings:
    """A model server's checked settings."""

    model: ModelFile
    alias: str
    context_size: int = DEFAULT_CONTEXT_SIZE
    slots: int = 1
    threads: int = 1
    fetch: bool = False

    @property
    def total_threads(self) -> int:
        """CPU threads llama.cpp runs: ``threads`` for each slot."""
        return self.threads * self.slots


def parse_settings(
    raw: Mapping[str, Any],
    *,
    where: str = "settings",
    file: str | None = None,
    base_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
) -> ModelServerSettings:
    """Check ``raw`` (a service's ``settings``) and resolve its model file.

    ``where`` prefixes the field in error messages (``services.llm.settings``);
    ``base_dir`` is where relative ``.gguf`` paths start (the mesh file's folder).
    """

    def problem(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=file, field=f"{where}.{key}")

    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {raw!r}", file=file, field=where)
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown keys {', '.join(map(str, unknown))} (expected some of {', '.join(_KEYS)})",
            file=file,
            field=where,
        )

    def integer(key: str, default: int, low: int, high: int) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise problem(key, f"expected an integer between {low} and {high}, got {value!r}")
        if not low <= value <= high:
            raise problem(key, f"expected an integer between {low} and {high}, got {value}")
        return value

    context_size = integer("context_size", DEFAULT_CONTEXT_SIZE, MIN_CONTEXT_SIZE, MAX_CONTEXT_SIZE)
    slots = integer("slots", 1, 1, MAX_SLOTS)
    threads = integer("threads", 1, 1, MAX_THREADS)
    if slots * threads > MAX_THREADS:
        raise problem("threads", f"slots x threads is {slots * threads}; at most {MAX_THREADS}")
    fetch = raw.get("fetch", False)
    if not isinstance(fetch, bool):
        raise problem("fetch", f"expected true or false, got {fetch!r}")

    model_setting = raw.get("model", DEFAULT_MODEL)
    if not isinstance(model_setting, str):
        raise problem("model", f"expected a catalog name or a .gguf path, got {model_setting!r}")
    sha256 = raw.get("sha256")
    try:
        model = resolve_model(model_setting, sha256=sha256, model_dir=model_dir, base_dir=base_dir)
    except UsageError as exc:
        raise problem("sha256" if "'sha256'" in exc.message else "model", exc.message) from None
    if fetch and model.packaged is None:
        raise problem("fetch", "only a catalog model can be fetched; 'model' is a .gguf path")

    alias = raw.get("alias", model.name)
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise problem(
            "alias",
            "expected a model id of letters, digits and . _ : / @ + - "
            f"(at most 128 characters), got {alias!r}",
        )
    return ModelServerSettings(
        model=model,
        alias=alias,
        context_size=context_size,
        slots=slots,
        threads=threads,
        fetch=fetch,
    )
