"""The public surface of the tool-service modules: every name in ``__all__`` exists."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "microhive.mcp",
    "microhive.mcp.server",
    "microhive.mcp.services",
    "microhive.mcp.openapi",
    "microhive.mcp.security",
    "microhive.netpolicy",
    "microhive.tools",
    "microhive.tools.calculator",
    "microhive.tools.notifier",
    "microhive.tools.pdf",
    "microhive.tools.sentiment",
    "microhive.tools.web",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    for attr in exported:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_service_kinds_resolve_to_factories() -> None:
    from microhive.config.model import SERVICE_KINDS

    for kind in ["tool", "openapi-tools", "calculator-rest", "pdf", "web", "sentiment", "notifier"]:
        target = SERVICE_KINDS[kind]
        assert target is not None
        module_name, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module_name), attr))
