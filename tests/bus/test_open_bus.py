"""Opening a bus by URL: lazy backends, clear errors, the public surface."""

from __future__ import annotations

import importlib
import sys

import pytest

import microhive.bus
from microhive.bus import BACKENDS, open_bus
from microhive.errors import InvalidInput, MissingDependency


@pytest.mark.parametrize("url", ["kafka://broker:9092", "nats:/x", "", "embedded"])
def test_unknown_scheme_names_the_known_ones(url: str) -> None:
    with pytest.raises(InvalidInput, match=r"expected one of memory://, embedded://"):
        open_bus(url)


@pytest.mark.parametrize(
    "url",
    ["nats://127.0.0.1:4222?namespace=bad.name", "redis://127.0.0.1:6379/0?namespace=a b",
     "redis://127.0.0.1:6379/0?maxlen=many", "embedded:///tmp/x?retention=soon"],
)  # fmt: skip
def test_bad_options_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        open_bus(url)


@pytest.mark.parametrize(
    ("scheme", "package", "extra"), [("nats", "nats", "nats"), ("redis", "redis", "redis")]
)
def test_missing_extra_gives_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, scheme: str, package: str, extra: str
) -> None:
    module = BACKENDS[scheme].partition(":")[0]
    monkeypatch.setitem(sys.modules, package, None)  # make "import <package>" fail
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingDependency) as err:
        importlib.import_module(module)
    assert f"pip install 'microhive[{extra}]'" in str(err.value)


def test_backends_are_imported_only_when_used() -> None:
    code = (
        "import sys, microhive.bus; "
        "assert not any(m in sys.modules for m in ('nats', 'redis', 'microhive.bus.nats')), "
        "sorted(m for m in sys.modules if m.startswith(('nats', 'redis')))"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_surface() -> None:
    assert set(microhive.bus.__all__) == {
        "BACKENDS", "DLQ_PREFIX", "Bus", "Delivery", "Handler", "PublishAck", "Start",
        "Subscription", "bus_from_spec", "open_bus", "register_bus_metrics", "subject_matches",
    }  # fmt: skip
    for name in microhive.bus.__all__:
        assert hasattr(microhive.bus, name)


@pytest.mark.parametrize(
    ("pattern", "subject", "match"),
    [("a.b", "a.b", True), ("a.*", "a.b", True), ("a.*", "a.b.c", False), ("a.>", "a.b.c", True),
     ("a.>", "a", False), ("*", "a", True), (">", "a.b", True), ("a.*.c", "a.x.c", True),
     ("a.*.c", "a.x.d", False), ("a", "a.b", False)],
)  # fmt: skip
def test_subject_matching(pattern: str, subject: str, match: bool) -> None:
    assert microhive.bus.subject_matches(pattern, subject) is match
