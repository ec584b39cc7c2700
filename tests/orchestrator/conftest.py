"""Fixtures of the orchestrator tests: an in-process bus and a workflow store on disk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microhive.bus import Bus, open_bus
from microhive.orchestrator import WorkflowStore, open_store


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    async with open_bus("memory://") as bus:
        yield bus


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[WorkflowStore]:
    async with open_store(f"sqlite:///{tmp_path}/wf.db") as store:
        yield store
