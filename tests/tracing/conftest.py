"""Fixtures for the tracing tests: a store in a temp folder and a second real process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).with_name("tracing_child.py")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'traces.db'}"


def _run_child(job: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _start_child(job: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


RunChild = Callable[[dict[str, Any]], dict[str, Any]]
StartChild = Callable[[dict[str, Any]], "subprocess.Popen[str]"]


@pytest.fixture
def run_child() -> RunChild:
    """Run ``tracing_child.py`` as its own process; returns what it printed (as JSON)."""
    return _run_child


@pytest.fixture
def start_child() -> StartChild:
    """Start ``tracing_child.py`` without waiting; ``communicate()`` on the result."""
    return _start_child
