"""Running a mesh locally: ``init``, ``up``, ``status``, ``down``, ``logs``, ``serve``.

``up`` starts a supervisor in the background (see :mod:`microhive.supervisor`)
and waits, showing progress, until every replica is ready or one has failed.
The other commands find that supervisor through ``<project>/.microhive/``, where
the project is the folder of the mesh file.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from microhive.cli import _render
from microhive.cli._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    FileOption,
    JsonOption,
    err,
    fail,
    handle_errors,
    load_mesh,
    out,
    print_json,
)
from microhive.config import DEFAULT_FILE, MeshConfig, find_config, load_config
from microhive.errors import MicrohiveError
from microhive.supervisor import (
    ProjectPaths,
    RestartPolicy,
    busy_ports,
    has_exited,
    live_status,
    read_state,
    start_detached,
    stop_mesh,
    supervisor_pid,
)
from microhive.supervisor._os import tail

__all__ = ["app"]

app = typer.Typer()

_SETTLED = {"ready", "failed", "blocked", "restarting"}


def _project(file: Path | None) -> tuple[Path, ProjectPaths]:
    """The mesh file and its project paths, without validating the file (exit 2 if absent)."""
    with handle_errors():
        path = find_config(file)
    return path, ProjectPaths.for_config(path)


def _try_load(path: Path) -> MeshConfig | None:
    try:
        return load_config(path)
    except MicrohiveError:
        return None


def _stop_timeout(mesh: MeshConfig | None) -> float:
    """Long enough for every dependency level to use its grace period, plus slack."""
    if mesh is None or not mesh.services:
        return 60.0
    depth: dict[str, int] = {}
    for name in mesh.start_order():
        deps = mesh.services[name].depends_on
        depth[name] = 1 + max((depth[d] for d in deps), default=-1)
    grace: dict[int, float] = {}
    for name, level in depth.items():
        grace[level] = max(grace.get(level, 0.0), mesh.services[name].grace_period)
    return sum(grace.values()) + 5.0


# ------------------------------------------------------------------- init


@app.command()
def init(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="Where to write the mesh file.")
    ] = Path(DEFAULT_FILE),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter mesh file (microhive.yaml)."""
    from microhive.config.starter import STARTER_YAML

    if file.exists() and not force:
        fail(f"{file} already exists; pass --force to overwrite it")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(STARTER_YAML, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror or exc}")
    out.print(f"wrote {file}; edit it, then run 'microhive up'")


# --------------------------------------------------------------------- up


@app.command()
def up(
    file: FileOption = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.1,
            help="Seconds to wait for the whole mesh (default: the sum of the start-up timeouts).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Start every service in the background and wait until all are ready.

    Exits 0 when every replica answers its ready path; 1 when one fails to start
    (its last log lines are printed), a port is taken, or the wait times out.
    The mesh keeps running after this command returns; stop it with 'microhive down'.
    """
    mesh, path = load_mesh(file)
    paths = ProjectPaths.for_config(path)
    with handle_errors():
        RestartPolicy.from_env(os.environ)  # a bad knob is a usage error now, not a dead supervisor
    if not mesh.services:
        fail(f"{path} defines no services to start", EXIT_USAGE)
    running = supervisor_pid(paths)
    if running is not None:
        fail(
            f"a supervisor is already running for {paths.project} (pid {running}); "
            "see 'microhive status', or stop it with 'microhive down'"
        )
    busy = busy_ports(mesh)
    if busy:
        fail(
            "; ".join(
                f"port {port} on {host} is already in use (needed by service {svc!r} "
                f"replica {index})"
                for svc, index, host, port in busy
            )
            + ". Stop whatever listens there or change the port in the mesh file."
        )
    limit = timeout or sum(s.startup_timeout for s in mesh.services.values()) + 10.0
    sup_pid = start_detached(path, paths)
    try:
        outcome, state = _wait_up(paths, sup_pid, limit, show=not json_out and err.is_terminal)
    except KeyboardInterrupt:
        err.print(
            "stopped waiting; the mesh goes on starting in the background "
            "('microhive status' to watch it, 'microhive down' to stop it)"
        )
        raise typer.Exit(130) from None
    payload: dict[str, Any] = (
        live_status(state) if state else {"running": False, "project": str(paths.project)}
    )
    payload["outcome"] = outcome
    if json_out:
        print_json(payload)
    else:
        out.print(_render.status_table(payload.get("services", [])))
    if outcome == "ready":
        if not json_out:
            err.print(f"[green]mesh {mesh.name!r} is up[/] (supervisor pid {sup_pid})")
        return
    if outcome == "supervisor-exited":
        lines = tail(paths.supervisor_log, 20)
        fail("the supervisor exited while starting the mesh:\n" + "\n".join(lines))
    if not json_out:
        _render.failures(err, payload.get("services", []))
    if outcome == "timeout":
        # Named from the mesh file: a supervisor slow to start may not have reported yet.
        reported = {
            f"{r['service']}-{r['replica']}": r.get("state") for r in payload.get("services", [])
        }
        expected = [f"{n}-{i}" for n, spec in mesh.services.items() for i in range(spec.replicas)]
        waiting = [name for name in expected if reported.get(name) != "ready"]
        fail(
            f"not ready within {limit:g}s: {', '.join(waiting)}. The mesh is still running: "
            "see 'microhive status' and 'microhive logs SERVICE', or stop it with 'microhive down'"
        )
    else:
        bad = [
            f"{r['service']}-{r['replica']} ({r.get('reason')})"
            for r in payload.get("services", [])
            if r.get("state") == "failed"
        ]
        fail(
            "failed to start: " + "; ".join(bad) + ". The rest of the mesh is still running: "
            "see 'microhive status' and 'microhive logs SERVICE', then 'microhive down'"
        )


def _wait_up(
    paths: ProjectPaths, sup_pid: int, limit: float, *, show: bool
) -> tuple[str, dict[str, Any] | None]:
    """Poll state.json until every replica is ready, one failed, or time runs out."""
    deadline = time.monotonic() + limit
    state: dict[str, Any] | None = None
    live = Live(_render.progress_table([]), console=err, transient=True) if show else None
    if live is not None:
        live.start()
    try:
        while True:
            current = read_state(paths)
            if current and (current.get("supervisor") or {}).get("pid") == sup_pid:
                state = current
                replicas = state.get("replicas") or []
                if live is not None:
                    live.update(_render.progress_table(replicas))
                states = {r.get("state") for r in replicas}
                if states <= {"ready"}:
                    return "ready", state
                if states <= _SETTLED and states & {"failed", "blocked"}:
                    return "failed", state
            if has_exited(sup_pid):
                return "supervisor-exited", state
            if time.monotonic() > deadline:
                return "timeout", state
            time.sleep(0.1)
    finally:
        if live is not None:
            live.stop()


# ----------------------------------------------------------------- status


@app.command()
def status(file: FileOption = None, json_out: JsonOption = False) -> None:
    """Show each service replica: pid, port, state, live health, restarts, uptime.

    Exits 1 when no supervisor is running for the project.
    """
    _, paths = _project(file)
    pid = supervisor_pid(paths)
    state = read_state(paths) if pid is not None else None
    if pid is not None and state is None:  # started a moment ago, nothing written yet
        state = {"supervisor": {"pid": pid, "state": "starting"}, "replicas": []}
    if pid is None or state is None:
        if json_out:
            print_json({"running": False, "project": str(paths.project)})
        fail(f"no supervisor is running for {paths.project}; start the mesh with 'microhive up'")
    payload = live_status(state)
    if json_out:
        print_json(payload)
        return
    sup = payload["supervisor"]
    err.print(
        f"mesh {payload.get('mesh')!r}: supervisor pid {sup.get('pid')} "
        f"{sup.get('state')}, up {_render.uptime(sup.get('uptime'))}"
    )
    out.print(_render.status_table(payload["services"]))
    _render.failures(err, payload["services"])


# ------------------------------------------------------------------- down


@app.command()
def down(
    file: FileOption = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.1,
            help="Seconds to wait for a graceful stop before killing "
            "(default: the grace periods plus 5 s).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Stop the mesh gracefully and wait until none of its processes is left."""
    path, paths = _project(file)
    limit = timeout or _stop_timeout(_try_load(path))
    report = stop_mesh(paths, limit)
    if json_out:
        print_json(
            {
                "was_running": report.was_running,
                "stopped": report.stopped,
                "forced": report.forced,
                "left": report.left,
            }
        )
    if report.left:
        fail(f"could not stop these processes: {', '.join(map(str, report.left))}")
    if json_out:
        return
    if report.forced:
        err.print(
            f"[yellow]warning:[/] killed {len(report.forced)} process(es) that did not stop "
            "in time: " + ", ".join(map(str, report.forced))
        )
    if not report.was_running and not report.stopped:
        err.print(f"no supervisor was running for {paths.project}; nothing to stop")
    else:
        err.print(f"[green]stopped[/] {len(report.stopped)} process(es); nothing is left running")


# ------------------------------------------------------------------- logs


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="The service whose log to show.")],
    replica: Annotated[
        int | None, typer.Option("--replica", "-r", min=0, help="Only this replica.")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines to show.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="The mesh file (default: ./microhive.yaml).", show_default=False
        ),
    ] = None,
) -> None:
    """Show a service's log (all replicas, each line prefixed, unless --replica)."""
    path, paths = _project(file)
    if replica is not None:
        files = [paths.log_file(service, replica)]
        files = [f for f in files if f.exists()]
    else:
        pattern = re.compile(rf"^{re.escape(service)}-(\d+)\.log$")
        found = [
            (int(m.group(1)), f)
            for f in (paths.logs_dir.glob(f"{service}-*.log") if paths.logs_dir.is_dir() else [])
            if (m := pattern.match(f.name))
        ]
        files = [f for _, f in sorted(found)]
    if not files:
        mesh = _try_load(path)
        if mesh is not None and service not in mesh.services:
            known = ", ".join(sorted(mesh.services)) or "none"
            fail(f"no service named {service!r} in {path} (services: {known})", EXIT_USAGE)
        which = f"{service}-{replica}" if replica is not None else service
        fail(f"no log for {which} yet under {paths.logs_dir}", EXIT_FAILURE)
    prefix = len(files) > 1
    for f in files:
        for line in tail(f, lines):
            _echo(f, line, prefix)
    if follow:
        _follow(files, prefix)


def _echo(f: Path, line: str, prefix: bool) -> None:
    typer.echo(f"{f.stem} | {line}" if prefix else line)


def _follow(files: list[Path], prefix: bool) -> None:
    offsets = {f: f.stat().st_size for f in files}
    partial = dict.fromkeys(files, "")
    try:
        while True:
            for f in files:
                try:
                    size = f.stat().st_size
                except OSError:
                    continue
                if size < offsets[f]:  # truncated or replaced: start over
                    offsets[f] = 0
                if size == offsets[f]:
                    continue
                with f.open("rb") as fh:
                    fh.seek(offsets[f])
                    data = fh.read()
                offsets[f] += len(data)
                text = partial[f] + data.decode("utf-8", errors="replace")
                *complete, partial[f] = text.split("\n")
                for line in complete:
                    _echo(f, line, prefix)
                sys.stdout.flush()  # a pipe is block-buffered; followers want lines now
            time.sleep(0.2)
    except KeyboardInterrupt:
        return


# ------------------------------------------------------------------ serve


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="The service of the mesh to run.")],
    replica: Annotated[int, typer.Option("--replica", min=0, help="Replica number.")] = 0,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=1, max=65535, help="Port (default: the service's port + replica)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default: from the mesh file).")
    ] = None,
    file: FileOption = None,
) -> None:
    """Run one service in the foreground (what the supervisor and a container run).

    Exits 3 when the port is already in use, and 78 when the service is
    misconfigured (e.g. a model's API key is not set; the last log line says why).
    """
    mesh, path = load_mesh(file)  # a bad file or name is a clear exit 2 before anything runs
    with handle_errors():
        mesh.service(service)
    from microhive.service import serve_service

    raise typer.Exit(serve_service(path, service, replica=replica, port=port, host=host))
