"""A service that cannot start says why in one line, exits at once, and is not retried.

The case users hit first: a model's API key is not set. The orchestrator opens
the planner and every worker opens its role's model when it starts, so the
service stops there -- one log record whose message is the error's, no
traceback (it is an expected error), exit code 78 -- instead of failing (and
being retried) on its first sub-task. Tracebacks stay for the unexpected.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from microhive.agents.service import create_service as create_worker
from microhive.config import MeshConfig
from microhive.errors import ConfigError, UsageError
from microhive.orchestrator.service import create_service as create_orchestrator
from microhive.service import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    Service,
    ServiceContext,
    configure_logging,
    run_app,
)
from tests.conftest import free_port

KEY_ENV = "MICROHIVE_TEST_NOPE_KEY"
MISSING = f"needs an API key in the environment variable {KEY_ENV}, which is not set"


def _mesh(root: Path) -> dict[str, Any]:
    """A mesh whose planner and worker use an OpenAI model whose key variable is unset."""
    return {
        "name": "keys",
        "bus": {"url": f"embedded://{root}/bus"},
        "stores": {"workflow": f"sqlite:///{root}/wf.db", "traces": f"sqlite:///{root}/t.db"},
        "models": {"remote": {"provider": "openai", "model": "x", "api_key_env": KEY_ENV}},
        "roles": {"planner": {"model": "remote"}, "researcher": {"model": "remote"}},
        "services": {
            "worker": {"kind": "worker", "settings": {"role": "researcher", "gateway": None}},
            "orchestrator": {"kind": "orchestrator"},
        },
    }


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("name", ["worker", "orchestrator"])
async def test_a_missing_key_fails_the_start_in_one_line(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = MeshConfig.model_validate(_mesh(tmp_path))
    ctx = ServiceContext.from_mesh(mesh, name, port=0, config_path=tmp_path / "microhive.yaml")
    factory = {"worker": create_worker, "orchestrator": create_orchestrator}[name]
    service = factory(ctx)

    with caplog.at_level(logging.INFO), pytest.raises(UsageError, match=MISSING) as raised:
        async with service.running():
            pytest.fail(f"the {name} started without its model's key")

    assert service.startup_error is raised.value
    (record,) = _errors(caplog)  # one record, not a traceback spread over several
    assert record.getMessage() == raised.value.message
    assert record.exc_info is None
    assert getattr(record, "error", None) == raised.value.code
    assert not (tmp_path / "bus").exists()  # failed before opening anything else


def _failing(exc: BaseException) -> Service:
    service = Service(name="broken")

    @service.on_startup
    async def start() -> None:
        raise exc

    return service


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The process's JSON log lines, as the runner configures them."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging("broken", 0, stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_run_app_logs_an_expected_start_failure_once_and_exits_78(
    log_stream: io.StringIO,
) -> None:
    stream = log_stream
    code = run_app(_failing(ConfigError("set FROB_URL", field="settings.frob")), port=0)
    assert code == EXIT_CONFIG == 78
    errors = [r for r in _records(stream) if r["level"] == "error"]
    # uvicorn's "startup failed" line and Starlette's traceback are not repeated
    assert [(r["msg"], r["error"]) for r in errors] == [
        ("<config>: settings.frob: set FROB_URL", "config_error")
    ]
    assert "Traceback" not in stream.getvalue()


def test_run_app_keeps_the_traceback_of_an_unexpected_failure(log_stream: io.StringIO) -> None:
    stream = log_stream
    code = run_app(_failing(RuntimeError("the frobnicator exploded")), port=0)
    assert code == EXIT_FAILURE
    assert "Traceback" in stream.getvalue()
    assert "the frobnicator exploded" in stream.getvalue()


@pytest.mark.parametrize("name", ["worker", "orchestrator"])
def test_serve_prints_the_one_line_and_exits_78(name: str, tmp_path: Path) -> None:
    (tmp_path / "microhive.yaml").write_text(yaml.safe_dump(_mesh(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROHIVE")}
    done = subprocess.run(
        [sys.executable, "-m", "microhive", "serve", name, "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "Traceback" not in done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    errors = [r for r in records if r["level"] == "error"]
    assert len(errors) == 1, done.stderr
    assert MISSING in errors[0]["msg"]
    assert errors[0]["service"] == name
    assert "exc" not in errors[0]
    assert records[-1] == errors[0]  # the last thing it said
