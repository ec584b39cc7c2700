"""Fixtures for the supervisor tests (helpers live in supervisor_helpers.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervisor_helpers import Project, gone, is_ours


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(tmp_path)
    seen: set[int] = set()
    yield proj
    seen.update(proj.recorded_pids())
    if proj.state_dir.exists():
        proj.run("down", "--timeout", "10")
    for pid in seen | set(proj.recorded_pids()):
        if not gone(pid) and is_ours(pid):  # a test failed half-way: do not leak processes
            os.kill(pid, signal.SIGKILL)
