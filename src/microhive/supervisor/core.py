"""The supervisor: starts every replica of a mesh as its own process and keeps it up.

It is one plain, single-threaded polling loop (a tick every 100 ms) over a small
state machine per replica, because that is easy to reason about under signals
and needs no event loop::

    pending --deps ready--> starting --/readyz 200--> ready
       |                       |  died / not ready in time      | died
       v                       v  (never ready yet: no retry)    v
    blocked                  failed  <--crash loop--  restarting (backoff)
                               ^                                 |
                               `------ configuration error ------'
                                       (exit code 78: no retry)

Every child runs in its own session (so its process group can be signalled as a
whole) and, on Linux, gets SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``),
so a killed supervisor leaves no orphans behind. The supervisor writes
``state.json`` (atomically) on every change; the CLI reads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx

from microhive.config import MeshConfig, ServiceSpec
from microhive.errors import ConfigError, SupervisorError
from microhive.supervisor._os import (
    atomic_write_json,
    free_port,
    port_free,
    process_start,
    signal_group,
    signal_name,
    tail,
)
from microhive.supervisor.paths import ProjectPaths

__all__ = [
    "BLOCKED",
    "FAILED",
    "PENDING",
    "READY",
    "RESTARTING",
    "STARTING",
    "STOPPED",
    "STOPPING",
    "Replica",
    "RestartPolicy",
    "Supervisor",
    "config_failure",
    "probe_host",
]

PENDING, STARTING, READY, RESTARTING = "pending", "starting", "ready", "restarting"
FAILED, BLOCKED, STOPPING, STOPPED = "failed", "blocked", "stopping", "stopped"

#: ``microhive serve`` exits with this code when its port is taken.
EXIT_PORT_IN_USE = 3
#: ``EX_CONFIG`` (sysexits.h): ``microhive serve`` exits with it on a configuration error
#: (a bad setting, a model's missing API key or SDK), and so may a ``kind: command``
#: service. Restarting cannot help, so the replica is failed at once, with its reason.
EXIT_CONFIG = 78
#: ``microhive serve`` exits with this when its command line or mesh file is wrong.
EXIT_USAGE = 2
#: How many log lines a failed replica carries in state.json.
LOG_LINES = 20
#: A replica's log is rotated (one ``.1`` kept) when it starts and is larger than this.
LOG_MAX_BYTES = 20 * 1024 * 1024
#: Without a ready_path, a process counts as ready once it has stayed up this long.
ALIVE_GRACE = 0.5

log = logging.getLogger("microhive.supervisor")


def config_failure(exit_code: int | None, kind: str) -> bool:
    """Whether a replica's exit code says it is misconfigured (never worth a restart)."""
    if exit_code == EXIT_CONFIG:
        return True
    return exit_code == EXIT_USAGE and kind != "command"


def _error_line(lines: list[str]) -> str | None:
    """The message of the last error record among a replica's JSON log lines."""
    for line in reversed(lines):
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical"):
            message = record.get("msg")
            if isinstance(message, str) and message.strip():
                return message.strip()
    return None


def probe_host(host: str) -> str:
    """The address to probe a server bound to ``host`` on (a wildcard means loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


@dataclass
class Replica:
    """One process of one service, and what the supervisor knows about it."""

    service: str
    index: int
    spec: ServiceSpec
    host: str
    port: int | None
    log_path: Path
    state: str = PENDING
    pid: int | None = None
    pid_start: int | None = None
    restarts: int = 0
    started_at: float | None = None
    ready_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    last_log: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    ever_ready: bool = False
    started_mono: float = 0.0
    restart_at: float = 0.0
    recent_restarts: deque[float] = field(default_factory=deque)

    @property
    def ready_url(self) -> str | None:
        if self.spec.ready_path is None or self.port is None:
            return None
        host = probe_host(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{self.spec.ready_path}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "replica": self.index,
            "kind": self.spec.kind,
            "host": self.host,
            "port": self.port,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "state": self.state,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "ready_url": self.ready_url,
            "log": str(self.log_path),
            "last_log": self.last_log,
        }


@dataclass(frozen=True)
class RestartPolicy:
    """How a replica that died after being ready is restarted.

    The delay starts at ``backoff`` seconds and doubles with each restart inside
    ``window`` seconds, up to ``backoff_max``. A replica that needs more than
    ``max_restarts`` restarts inside ``window`` is in a crash loop: it is marked
    failed (with its last log lines) instead of being restarted again.
    """

    backoff: float = 0.5
    backoff_max: float = 30.0
    max_restarts: int = 5
    window: float = 60.0

    #: environment variable -> field, read by :meth:`from_env`.
    ENV: ClassVar[dict[str, str]] = {
        "MICROHIVE_RESTART_BACKOFF": "backoff",
        "MICROHIVE_RESTART_BACKOFF_MAX": "backoff_max",
        "MICROHIVE_MAX_RESTARTS": "max_restarts",
        "MICROHIVE_RESTART_WINDOW": "window",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RestartPolicy:
        """The policy with any ``MICROHIVE_RESTART_*`` variables applied (ConfigError if bad)."""
        values: dict[str, Any] = {}
        for name, key in cls.ENV.items():
            raw = env.get(name)
            if raw is None:
                continue
            try:
                value: float = int(raw) if key == "max_restarts" else float(raw)
            except ValueError:
                value = -1
            if value < 0:
                raise ConfigError(
                    f"expected a number >= 0, got {raw!r}", file=f"environment variable {name}"
                )
            values[key] = value
        return cls(**values)


def _rotate(path: Path) -> None:
    """Keep one previous log (``.1``) once a log passes LOG_MAX_BYTES; checked at each start."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return hook


class Supervisor:
    """Runs one mesh until told to stop (SIGTERM/SIGINT or :meth:`request_stop`)."""

    def __init__(
        self,
        mesh: MeshConfig,
        config_path: Path,
        paths: ProjectPaths,
        *,
        policy: RestartPolicy | None = None,
        tick: float = 0.1,
    ) -> None:
        self.mesh = mesh
        self.config_path = config_path.resolve()
        self.paths = paths
        self.policy = policy or RestartPolicy()
        self.tick = tick
        self.state = "starting"
        self.started_at = time.time()
        self.pid = os.getpid()
        self._stop = False
        self._dirty = True
        self._preexec = _die_with_parent()
        self._lock: IO[bytes] | None = None
        self.replicas: list[Replica] = []
        for name in mesh.start_order():
            spec = mesh.services[name]
            host = spec.host or mesh.host
            for index, port in enumerate(spec.ports()):
                self.replicas.append(
                    Replica(name, index, spec, host, port, paths.log_file(name, index))
                )

    # ------------------------------------------------------------ lifecycle

    def request_stop(self, *_: object) -> None:
        """Ask the loop to stop (safe to call from a signal handler: it only sets a flag)."""
        self._stop = True

    def run(self) -> int:
        """Start the mesh, keep it running until asked to stop, then stop it. Returns 0."""
        self.paths.ensure()
        self._acquire_lock()
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        client = httpx.Client(timeout=httpx.Timeout(1.0), trust_env=False)
        try:
            self.paths.pid_file.write_text(f"{self.pid}\n", encoding="utf-8")
            log.info("supervisor %d started for %s", self.pid, self.paths.project)
            self.state = "running"
            while not self._stop:
                self._step(client)
                self._write_state()
                time.sleep(self.tick)
        except Exception:
            log.exception("supervisor loop failed; stopping the mesh")
        finally:
            self.state = "stopping"
            self._dirty = True
            self._write_state()
            self._shutdown()
            client.close()
            self.state = "stopped"
            self._dirty = True
            self._write_state()
            with contextlib.suppress(OSError):
                self.paths.pid_file.unlink()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._release_lock()
            log.info("supervisor %d stopped", self.pid)
        return 0

    def _acquire_lock(self) -> None:
        fh = self.paths.lock_file.open("ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise SupervisorError(
                f"a supervisor is already running for {self.paths.project}"
            ) from None
        self._lock = fh

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ----------------------------------------------------------------- loop

    def _step(self, client: httpx.Client) -> None:
        now = time.monotonic()
        by_service: dict[str, list[Replica]] = {}
        for r in self.replicas:
            by_service.setdefault(r.service, []).append(r)
        for r in self.replicas:
            if r.state == PENDING:
                deps = [d for name in r.spec.depends_on for d in by_service[name]]
                stuck = next((d for d in deps if d.state in (FAILED, BLOCKED)), None)
                if stuck is not None:
                    self._set(r, BLOCKED, reason=f"dependency {stuck.service!r} did not start")
                elif all(d.ever_ready for d in deps):
                    self._spawn(r)
            elif r.state in (STARTING, READY):
                assert r.proc is not None
                code = r.proc.poll()
                if code is not None:
                    self._on_exit(r, code)
                elif r.state == STARTING:
                    if self._is_ready(r, client, now):
                        r.ever_ready = True
                        r.ready_at = time.time()
                        self._set(r, READY, reason=None)
                        log.info("%s-%d ready (pid %s)", r.service, r.index, r.pid)
                    elif now - r.started_mono > r.spec.startup_timeout:
                        self._kill(r)
                        self._on_failure(r, f"not ready within {r.spec.startup_timeout:g}s")
            elif r.state == RESTARTING and now >= r.restart_at:
                self._spawn(r)

    def _is_ready(self, r: Replica, client: httpx.Client, now: float) -> bool:
        url = r.ready_url
        if url is None:
            return now - r.started_mono >= min(ALIVE_GRACE, r.spec.startup_timeout / 2)
        try:
            return client.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def _set(self, r: Replica, state: str, **changes: Any) -> None:
        r.state = state
        for key, value in changes.items():
            setattr(r, key, value)
        self._dirty = True

    # ---------------------------------------------------------- processes

    def _argv(self, r: Replica) -> list[str]:
        assert r.port is not None
        if r.spec.kind == "command":
            assert r.spec.command is not None
            return [
                arg.replace("{port}", str(r.port)).replace("{host}", r.host)
                for arg in r.spec.command
            ]
        return [
            sys.executable, "-m", "microhive", "serve", r.service,
            "--replica", str(r.index), "--port", str(r.port), "-f", str(self.config_path),
        ]  # fmt: skip

    def _env(self, r: Replica) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(r.spec.env)
        env.update(
            MICROHIVE_SERVICE=r.service,
            MICROHIVE_REPLICA=str(r.index),
            MICROHIVE_PORT=str(r.port),
            MICROHIVE_HOST=r.host,
        )
        return env

    def _spawn(self, r: Replica) -> None:
        if r.port is None:
            r.port = free_port(probe_host(r.host))
        if not port_free(r.host, r.port):
            self._on_failure(
                r, f"port {r.port} on {r.host} is in use (service {r.service!r} replica {r.index})"
            )
            return
        argv = self._argv(r)
        r.log_path.parent.mkdir(parents=True, exist_ok=True)
        _rotate(r.log_path)
        with r.log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- microhive {stamp}: starting {' '.join(argv)}\n".encode())
            out.flush()
            try:
                r.proc = subprocess.Popen(
                    argv,
                    cwd=self.paths.project,
                    env=self._env(r),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=self._preexec,  # single-threaded: safe
                )
            except OSError as exc:
                out.write(f"--- microhive: cannot start: {exc}\n".encode())
                r.proc = None
                self._on_failure(r, f"cannot start {argv[0]!r}: {exc.strerror or exc}", final=True)
                return
        r.started_mono = time.monotonic()
        self._set(
            r,
            STARTING,
            pid=r.proc.pid,
            pid_start=process_start(r.proc.pid),
            started_at=time.time(),
            exit_code=None,
        )
        log.info("%s-%d started: pid %d, port %s", r.service, r.index, r.proc.pid, r.port)

    def _kill(self, r: Replica) -> None:
        if r.proc is not None:
            signal_group(r.proc.pid, signal.SIGKILL)
            r.proc.wait()
            r.exit_code = r.proc.returncode
            r.proc = None
        r.pid = r.pid_start = None

    def _on_exit(self, r: Replica, code: int) -> None:
        assert r.proc is not None
        signal_group(r.proc.pid, signal.SIGKILL)  # anything the process left in its group
        r.proc = None
        r.pid = r.pid_start = None
        r.exit_code = code
        if config_failure(code, r.spec.kind):
            # What to fix is the service's last error line; retrying cannot fix it.
            said = _error_line(tail(r.log_path, LOG_LINES))
            reason = said or f"configuration error (exit code {code})"
            log.warning("%s-%d exited with code %d: %s", r.service, r.index, code, reason)
            self._on_failure(r, reason, final=True)
            return
        if code == EXIT_PORT_IN_USE and r.spec.kind != "command":
            reason = f"port {r.port} on {r.host} is in use"
        elif code < 0:
            reason = f"killed by {signal_name(-code)}"
        else:
            reason = f"exited with code {code}"
        if not r.ever_ready:
            reason += " before becoming ready"
        log.warning("%s-%d %s", r.service, r.index, reason)
        self._on_failure(r, reason)

    def _on_failure(self, r: Replica, reason: str, *, final: bool = False) -> None:
        """Restart with backoff, or give up: at start-up, on a crash loop, or when ``final``."""
        now = time.monotonic()
        while r.recent_restarts and now - r.recent_restarts[0] > self.policy.window:
            r.recent_restarts.popleft()
        if final or not r.ever_ready:
            self._fail(r, reason)
        elif len(r.recent_restarts) >= self.policy.max_restarts:
            self._fail(
                r,
                f"crash loop: {reason}; restarted {len(r.recent_restarts)} times "
                f"within {self.policy.window:g}s",
            )
        else:
            r.recent_restarts.append(now)
            delay = min(
                self.policy.backoff * 2 ** (len(r.recent_restarts) - 1), self.policy.backoff_max
            )
            self._set(r, RESTARTING, restarts=r.restarts + 1, restart_at=now + delay, reason=reason)
            log.info("%s-%d restarting in %.1fs", r.service, r.index, delay)

    def _fail(self, r: Replica, reason: str) -> None:
        self._set(r, FAILED, reason=reason, last_log=tail(r.log_path, LOG_LINES))
        log.error("%s-%d failed: %s", r.service, r.index, reason)

    # ------------------------------------------------------------- shutdown

    def _levels(self) -> list[list[Replica]]:
        """Replicas grouped for stopping: dependants before what they depend on."""
        depth: dict[str, int] = {}
        for name in self.mesh.start_order():
            deps = self.mesh.services[name].depends_on
            depth[name] = 1 + max((depth[d] for d in deps), default=-1)
        levels: dict[int, list[Replica]] = {}
        for r in self.replicas:
            levels.setdefault(depth[r.service], []).append(r)
        return [levels[k] for k in sorted(levels, reverse=True)]

    def _shutdown(self) -> None:
        """SIGTERM each level, wait its grace period, SIGKILL what is left."""
        for level in self._levels():
            running = [r for r in level if r.proc is not None]
            deadline: dict[int, float] = {}
            for r in running:
                assert r.proc is not None
                if r.proc.poll() is None:
                    signal_group(r.proc.pid, signal.SIGTERM)
                deadline[id(r)] = time.monotonic() + r.spec.grace_period
                self._set(r, STOPPING)
            self._write_state()
            pending = list(running)
            while pending:
                still = []
                for r in pending:
                    assert r.proc is not None
                    if r.proc.poll() is not None:
                        continue
                    if time.monotonic() > deadline[id(r)]:
                        log.warning("%s-%d ignored SIGTERM; killing it", r.service, r.index)
                        signal_group(r.proc.pid, signal.SIGKILL)
                        r.proc.wait()
                        continue
                    still.append(r)
                pending = still
                if pending:
                    time.sleep(0.02)
            for r in level:
                if r.proc is not None:
                    signal_group(r.proc.pid, signal.SIGKILL)  # stragglers in its group
                    r.exit_code = r.proc.returncode
                    r.proc = None
                if r.state != FAILED:
                    r.state = STOPPED
                r.pid = r.pid_start = None
            self._dirty = True
            self._write_state()

    # ---------------------------------------------------------------- state

    def snapshot(self) -> dict[str, Any]:
        """What state.json holds."""
        return {
            "version": 1,
            "mesh": self.mesh.name,
            "project": str(self.paths.project),
            "config": str(self.config_path),
            "updated_at": time.time(),
            "supervisor": {
                "pid": self.pid,
                "pid_start": process_start(self.pid),
                "state": self.state,
                "started_at": self.started_at,
            },
            "replicas": [r.to_dict() for r in self.replicas],
        }

    def _write_state(self) -> None:
        if self._dirty:
            atomic_write_json(self.paths.state_file, self.snapshot())
            self._dirty = False
