"""The error hierarchy: one base, three families, install hints, file:line messages."""

from __future__ import annotations

import inspect

import microhive.errors as errors
from microhive.errors import (
    ConfigError,
    MicrohiveError,
    MissingDependency,
    RuntimeFailure,
    Stop,
    UsageError,
)


def test_every_error_descends_from_one_base_and_one_family() -> None:
    families = (UsageError, Stop, RuntimeFailure)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, MicrohiveError)
        if cls not in (MicrohiveError, *families):
            assert sum(issubclass(cls, f) for f in families) == 1, name


def test_every_error_is_drawn_in_the_module_docstring() -> None:
    doc = inspect.getdoc(errors) or ""
    for name in errors.__all__:
        assert name in doc, name


def test_codes_are_unique() -> None:
    codes = [getattr(errors, n).code for n in errors.__all__]
    assert len(codes) == len(set(codes))


def test_missing_dependency_gives_the_install_hint() -> None:
    err = MissingDependency("nats-py", "nats", "The NATS bus backend")
    assert "pip install 'microhive[nats]'" in str(err)
    assert err.to_dict()["error"] == "missing_dependency"


def test_config_error_formats_location() -> None:
    err = ConfigError("expected an integer", file="m.yaml", line=3, field="services.a.port")
    assert str(err) == "m.yaml:3: services.a.port: expected an integer"
