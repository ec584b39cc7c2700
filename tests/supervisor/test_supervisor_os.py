"""The small process/file helpers the supervisor relies on (in-process, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from microhive.config import parse_config
from microhive.errors import ConfigError
from microhive.supervisor import RestartPolicy
from microhive.supervisor._os import (
    atomic_write_json,
    free_port,
    pid_alive,
    port_free,
    process_start,
    read_json,
    tail,
)
from microhive.supervisor.core import probe_host


def test_tail_reads_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    assert tail(path, 5) == []
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert tail(path, 3) == ["line 4997", "line 4998", "line 4999"]
    assert tail(path, 0) == []
    path.write_text("a\nb")
    assert tail(path, 10) == ["a", "b"]


def test_atomic_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    atomic_write_json(path, {"a": [1, 2]})
    assert read_json(path) == {"a": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left
    path.write_text("{not json")
    assert read_json(path) is None
    path.write_text(json.dumps([1]))
    assert read_json(path) is None


def test_pid_alive_sees_exit_zombies_and_reuse() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        start = process_start(child.pid)
        assert pid_alive(child.pid)
        assert pid_alive(child.pid, start)
        if start is not None:  # Linux: a different start time is a different process
            assert not pid_alive(child.pid, start + 1)
        assert child.stdin is not None
        child.stdin.close()
        if start is not None:  # exited but not yet reaped: a zombie counts as gone
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # wait, do not reap
            assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid)
    assert not pid_alive(None)
    assert not pid_alive(0)


def test_ports() -> None:
    import socket

    port = free_port("127.0.0.1")
    assert port_free("127.0.0.1", port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_free("127.0.0.1", port)
    assert probe_host("0.0.0.0") == "127.0.0.1"
    assert probe_host("::") == "::1"
    assert probe_host("127.0.0.2") == "127.0.0.2"


def test_restart_policy_from_env() -> None:
    assert RestartPolicy.from_env({}) == RestartPolicy()
    policy = RestartPolicy.from_env(
        {"MICROHIVE_RESTART_BACKOFF": "0.1", "MICROHIVE_MAX_RESTARTS": "2"}
    )
    assert (policy.backoff, policy.max_restarts) == (0.1, 2)
    with pytest.raises(ConfigError, match="MICROHIVE_RESTART_WINDOW"):
        RestartPolicy.from_env({"MICROHIVE_RESTART_WINDOW": "-3"})
    with pytest.raises(ConfigError, match="MICROHIVE_MAX_RESTARTS"):
        RestartPolicy.from_env({"MICROHIVE_MAX_RESTARTS": "1.5"})


def test_start_order_puts_dependencies_first() -> None:
    mesh = parse_config(
        "services:\n"
        "  web: {kind: command, command: [x], depends_on: [api]}\n"
        "  api: {kind: command, command: [x], depends_on: [db]}\n"
        "  db: {kind: command, command: [x]}\n"
    )
    assert mesh.start_order() == ["db", "api", "web"]
