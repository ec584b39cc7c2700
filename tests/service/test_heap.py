"""A served process tunes CPython's cyclic collector once it is up (``settle_heap``).

Each case runs in a child process: freezing the heap is process-wide, and the
test runner's own heap must stay as it is.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

SERVE_ONCE = """
import gc, os, signal
from starlette.applications import Starlette
from microhive.service import run_app

before = (gc.get_freeze_count(), gc.get_threshold()[0])

def ready(host, port):
    print(before, (gc.get_freeze_count(), gc.get_threshold()[0]), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

raise SystemExit(run_app(Starlette(), port=0, on_ready=ready))
"""


def _serve_once(**env: str) -> tuple[tuple[int, int], tuple[int, int]]:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_ONCE],
        env={**os.environ, "MICROHIVE_LOG_LEVEL": "WARNING", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    before, after = ast.literal_eval(done.stdout.strip().splitlines()[-1].replace(") (", "), ("))
    return before, after


def test_a_started_service_freezes_its_start_up_heap_and_widens_the_young_generation() -> None:
    (frozen_before, young_before), (frozen_after, young_after) = _serve_once()
    assert frozen_before == 0
    assert young_before < 10_000  # CPython's default
    assert frozen_after > 10_000  # the modules and the app, out of the collector's walk
    assert young_after == 10_000


def test_the_tuning_can_be_turned_off() -> None:
    (_, young_before), (frozen_after, young_after) = _serve_once(MICROHIVE_GC_TUNING="0")
    assert frozen_after == 0
    assert young_after == young_before
