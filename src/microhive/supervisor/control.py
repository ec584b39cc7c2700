"""Talking to a project's supervisor from outside: find it, start it, read it, stop it.

The CLI uses these; so can tests and scripts. There is no socket protocol: the
supervisor is found through its lock and pid files, read through ``state.json``,
and stopped with SIGTERM. Liveness is always checked by pid (and, on Linux, by
process start time), never by the existence of a file alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from microhive.config import MeshConfig
from microhive.supervisor._os import pid_alive, port_free, read_json, signal_group
from microhive.supervisor.paths import ProjectPaths

__all__ = [
    "StopReport",
    "busy_ports",
    "has_exited",
    "live_status",
    "mesh_pids",
    "read_state",
    "start_detached",
    "stop_mesh",
    "supervisor_pid",
]


def read_state(paths: ProjectPaths) -> dict[str, Any] | None:
    """The last state the supervisor wrote, or None."""
    return read_json(paths.state_file)


def supervisor_pid(paths: ProjectPaths) -> int | None:
    """The pid of the project's running supervisor, or None (a stale pid file is removed).

    The supervisor holds an exclusive lock on ``supervisor.lock`` for its whole life,
    so "can we take the lock?" answers "is one running?" even after a pid is reused.
    """
    if not paths.lock_file.exists():
        return _pid_from_file(paths)
    with paths.lock_file.open("ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held = True
        else:
            held = False
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    if not held:
        with contextlib.suppress(OSError):
            paths.pid_file.unlink()
        return None
    pid = _pid_from_file(paths)
    if pid is None:  # locked but the pid file is not written yet: it is starting
        state = read_state(paths) or {}
        sup = state.get("supervisor") or {}
        pid = sup.get("pid") if isinstance(sup.get("pid"), int) else 0
    return pid


def _pid_from_file(paths: ProjectPaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid):
        return pid
    with contextlib.suppress(OSError):
        paths.pid_file.unlink()
    return None


def busy_ports(mesh: MeshConfig) -> list[tuple[str, int, str, int]]:
    """Fixed ports of the mesh that something already listens on: (service, replica, host, port)."""
    busy = []
    for name, spec in mesh.services.items():
        host = spec.host or mesh.host
        for index, port in enumerate(spec.ports()):
            if port is not None and not port_free(host, port):
                busy.append((name, index, host, port))
    return busy


def start_detached(config_path: Path, paths: ProjectPaths) -> int:
    """Start the supervisor as a background process of its own session; return its pid."""
    paths.ensure()
    with contextlib.suppress(OSError):
        paths.state_file.unlink()  # so nobody reads the previous run's state
    with paths.supervisor_log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "microhive.supervisor", "-f", str(config_path.resolve())],
            cwd=paths.project,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # The supervisor outlives us on purpose; mark it handled so Popen does not warn.
    proc.returncode = 0
    return proc.pid


def has_exited(pid: int) -> bool:
    """Whether ``pid`` (typically the supervisor we just started) has exited; reaps our child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: ask the OS
        return not pid_alive(pid)
    return done == pid


def mesh_pids(state: dict[str, Any] | None) -> list[tuple[int, int | None]]:
    """(pid, start time) of the supervisor and every replica named in a state snapshot."""
    if not state:
        return []
    out: list[tuple[int, int | None]] = []
    sup = state.get("supervisor") or {}
    if isinstance(sup.get("pid"), int):
        out.append((sup["pid"], sup.get("pid_start")))
    for entry in state.get("replicas") or []:
        if isinstance(entry.get("pid"), int):
            out.append((entry["pid"], entry.get("pid_start")))
    return out


@dataclass
class StopReport:
    """What :func:`stop_mesh` did."""

    was_running: bool
    stopped: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)


def stop_mesh(paths: ProjectPaths, timeout: float) -> StopReport:
    """Stop the supervisor and make sure no process of the mesh is left.

    SIGTERM to the supervisor (which stops its children gracefully); then wait,
    by pid, for the supervisor and every child recorded in ``state.json``. After
    ``timeout`` (or when the supervisor was already gone, leaving orphans), the
    rest get SIGTERM and then SIGKILL, each to its whole process group.
    """
    before = read_state(paths)
    pid = supervisor_pid(paths)
    tracked = {p: s for p, s in mesh_pids(before) if pid_alive(p, s)}
    report = StopReport(was_running=pid is not None)
    if pid:
        tracked.setdefault(pid, None)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        _wait_gone(tracked, timeout)
    # Read again: the supervisor may have restarted a child since our first read.
    tracked.update((p, s) for p, s in mesh_pids(read_state(paths)) if pid_alive(p, s))
    alive = [p for p, start in tracked.items() if pid_alive(p, start)]
    if alive:
        report.forced = alive
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in alive:
                if pid_alive(p, tracked[p]):
                    _signal(p, sig, group=p != pid)
            if _wait_gone({p: tracked[p] for p in alive}, 2.0):
                break
    report.left = [p for p, start in tracked.items() if pid_alive(p, start)]
    report.stopped = [p for p in tracked if p not in report.left]
    if not report.left:
        with contextlib.suppress(OSError):
            paths.pid_file.unlink()
    return report


def _signal(pid: int, sig: int, *, group: bool) -> None:
    """Signal a child's whole process group (it leads one), else just the process."""
    if group and signal_group(pid, sig):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: dict[int, int | None], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p, s) for p, s in pids.items()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def live_status(state: dict[str, Any], probe_timeout: float = 1.0) -> dict[str, Any]:
    """``state.json`` plus a live check of each replica: health and uptime.

    health: ``ready`` (the ready path answered 200), ``not-ready`` (another
    status), ``down`` (no answer or no process), ``alive`` (process up, no ready
    path to ask).
    """
    now = time.time()
    services = []
    with httpx.Client(timeout=httpx.Timeout(probe_timeout), trust_env=False) as client:
        for entry in state.get("replicas") or []:
            item = {k: v for k, v in entry.items() if k != "pid_start"}
            pid, start = entry.get("pid"), entry.get("pid_start")
            alive = isinstance(pid, int) and pid_alive(pid, start)
            url = entry.get("ready_url")
            if not alive:
                health = "down"
            elif not url:
                health = "alive"
            else:
                try:
                    code = client.get(url).status_code
                    health = "ready" if code == 200 else "not-ready"
                except httpx.HTTPError:
                    health = "down"
            started = entry.get("started_at")
            item["health"] = health
            item["uptime"] = round(now - started, 1) if alive and started else None
            services.append(item)
    sup = dict(state.get("supervisor") or {})
    sup.pop("pid_start", None)
    if sup.get("started_at"):
        sup["uptime"] = round(now - sup["started_at"], 1)
    return {
        "running": True,
        "mesh": state.get("mesh"),
        "project": state.get("project"),
        "config": state.get("config"),
        "supervisor": sup,
        "services": services,
    }
