"""``microhive up / status / down``: real processes, real sockets, the real CLI."""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx
import pytest
from supervisor_helpers import Project, gone, tiny, wait_until

STATUS_KEYS = {
    "service", "replica", "kind", "host", "port", "pid", "state", "health", "restarts",
    "uptime", "started_at", "ready_at", "exit_code", "reason", "ready_url", "log", "last_log",
}  # fmt: skip


def _readyz(port: int) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=5) as client:
        return client.get(f"http://127.0.0.1:{port}/readyz")


def test_up_restarts_a_killed_process_and_down_leaves_nothing(project: Project) -> None:
    project.write({"alpha": tiny(), "beta": tiny(), "gamma": tiny(depends_on=["alpha"])})

    result = project.run("up")
    assert result.returncode == 0, result.stderr
    status = project.status()
    assert status["running"] is True
    assert status["mesh"] == "test"
    assert set(status["supervisor"]) >= {"pid", "state", "started_at", "uptime"}
    services = {s["service"]: s for s in status["services"]}
    assert sorted(services) == ["alpha", "beta", "gamma"]
    for entry in services.values():
        assert set(entry) == STATUS_KEYS
        assert (entry["state"], entry["health"], entry["restarts"]) == ("ready", "ready", 0)
        answer = _readyz(entry["port"])
        assert answer.status_code == 200
        assert answer.text.split() == ["ok", str(entry["pid"])]  # that very process answers
    assert len({s["pid"] for s in services.values()}) == 3
    # gamma depends on alpha, so it started only after alpha was ready
    assert services["gamma"]["started_at"] >= services["alpha"]["ready_at"]

    again = project.run("up")
    assert again.returncode == 1
    assert "already running" in again.stderr

    old = services["beta"]
    os.kill(old["pid"], signal.SIGKILL)

    def restarted() -> bool:
        beta = project.recorded("beta")
        return beta["pid"] not in (None, old["pid"]) and beta["state"] == "ready"

    wait_until(restarted, what="beta to be restarted and ready")
    beta = project.replica("beta")
    assert beta["health"] == "ready"
    assert beta["restarts"] == 1
    assert beta["port"] == old["port"]
    assert _readyz(beta["port"]).text.split() == ["ok", str(beta["pid"])]
    assert project.replica("alpha")["restarts"] == 0

    everything = [status["supervisor"]["pid"], *(s["pid"] for s in services.values()), beta["pid"]]
    down = project.run("down")
    assert down.returncode == 0, down.stderr
    assert "nothing is left running" in down.stderr
    assert [pid for pid in everything if not gone(pid)] == []
    assert not (project.state_dir / "supervisor.pid").exists()
    after = project.run("status")
    assert after.returncode == 1
    assert "no supervisor is running" in after.stderr


def test_start_up_failure_is_reported_with_its_log_and_not_retried(project: Project) -> None:
    project.write(
        {
            "good": tiny(),
            "broken": tiny("--fail"),
            "after": tiny(depends_on=["broken"]),
        }
    )
    result = project.run("up")
    assert result.returncode == 1
    assert "broken-0" in result.stderr
    assert "fatal: cannot open the frobnicator" in result.stderr
    assert "exited with code 1 before becoming ready" in result.stderr

    services = {s["service"]: s for s in project.status()["services"]}
    broken = services["broken"]
    assert (broken["state"], broken["restarts"], broken["exit_code"]) == ("failed", 0, 1)
    assert broken["pid"] is None
    assert len(broken["last_log"]) == 20
    assert broken["last_log"][-1] == "fatal: cannot open the frobnicator"
    assert services["after"]["state"] == "blocked"
    assert services["after"]["pid"] is None
    assert services["good"]["state"] == "ready"

    shown = project.run("status")
    assert shown.returncode == 0
    assert "fatal: cannot open the frobnicator" in shown.stderr

    assert project.run("down").returncode == 0
    log = (project.state_dir / "logs" / "broken-0.log").read_text()
    assert log.count("--- microhive") == 1  # started once, never retried
    assert not (project.state_dir / "logs" / "after-0.log").exists()


def test_a_crash_loop_ends_in_failed_instead_of_spinning(project: Project) -> None:
    project.write({"flaky": tiny("--exit-after", "0.6")})
    result = project.run("up", MICROHIVE_RESTART_BACKOFF="0.05", MICROHIVE_MAX_RESTARTS="2")
    assert result.returncode == 0, result.stderr  # it was ready once
    wait_until(
        lambda: project.recorded("flaky")["state"] == "failed", what="the crash loop to be detected"
    )
    flaky = project.replica("flaky")
    assert flaky["restarts"] == 2
    assert "crash loop" in flaky["reason"]
    assert "exited with code 4" in flaky["reason"]
    assert flaky["last_log"]
    assert project.run("down").returncode == 0
    log = (project.state_dir / "logs" / "flaky-0.log").read_text()
    assert log.count("--- microhive") == 3


def test_port_in_use_is_a_clear_error(project: Project, unused_tcp_port_listener: int) -> None:
    port = unused_tcp_port_listener
    project.write({"web": tiny(port=port)})
    result = project.run("up")
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "service 'web'" in result.stderr
    assert not (project.state_dir / "supervisor.pid").exists()


def test_status_and_down_when_nothing_runs(project: Project) -> None:
    project.write({"web": tiny()})
    status = project.run("status", "--json")
    assert status.returncode == 1
    assert '"running": false' in status.stdout
    down = project.run("down")
    assert down.returncode == 0
    assert "nothing to stop" in down.stderr


def test_a_killed_supervisor_leaves_no_orphans(project: Project) -> None:
    project.write({"one": tiny(), "two": tiny(replicas=2), "quiet": tiny(ready_path=None)})
    assert project.run("up").returncode == 0
    assert project.replica("quiet")["health"] == "alive"  # no ready path: process up is enough
    state = project.state()
    supervisor = state["supervisor"]["pid"]
    children = [r["pid"] for r in state["replicas"]]
    os.kill(supervisor, signal.SIGKILL)
    if hasattr(os, "sched_getaffinity"):  # Linux: children die with their parent
        wait_until(lambda: all(gone(p) for p in children), what="children to follow the supervisor")
    down = project.run("down")  # stale pid file, maybe orphans: both handled
    assert down.returncode == 0, down.stderr
    assert [p for p in [supervisor, *children] if not gone(p)] == []
    assert project.run("status").returncode == 1
    result = project.run("up")  # the stale state does not block a new start
    assert result.returncode == 0, result.stderr
    assert project.run("down").returncode == 0


def test_down_kills_a_process_that_ignores_sigterm(project: Project) -> None:
    project.write({"stubborn": tiny("--ignore-term", grace_period=0.3)})
    assert project.run("up").returncode == 0
    pid = project.replica("stubborn")["pid"]
    down = project.run("down")
    assert down.returncode == 0, down.stderr
    assert gone(pid)
    assert "ignored SIGTERM" in (project.state_dir / "supervisor.log").read_text()


@pytest.fixture
def unused_tcp_port_listener() -> Any:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


HELLO_APP = """
from starlette.requests import Request

from microhive.service import Service, ServiceContext


def create(ctx: ServiceContext) -> Service:
    service = Service(ctx)

    @service.route("/hello")
    async def hello(request: Request) -> dict[str, object]:
        return {"service": ctx.name, "replica": ctx.replica}

    return service
"""


def test_app_services_run_through_microhive_serve(project: Project) -> None:
    (project.dir / "hello_app.py").write_text(HELLO_APP)
    project.write({"hello": {"kind": "app", "app": "hello_app:create", "replicas": 2}})
    result = project.run("up")
    assert result.returncode == 0, result.stderr + "".join(
        p.read_text() for p in (project.state_dir / "logs").glob("*.log")
    )
    replicas = project.status()["services"]
    assert [(r["state"], r["health"]) for r in replicas] == [("ready", "ready")] * 2
    with httpx.Client(trust_env=False, timeout=5) as client:
        for r in replicas:
            answer = client.get(f"http://127.0.0.1:{r['port']}/hello")
            assert answer.json() == {"service": "hello", "replica": r["replica"]}
    pids = [r["pid"] for r in replicas]
    assert project.run("down").returncode == 0
    assert [p for p in pids if not gone(p)] == []
    stopped = project.state()["replicas"]
    assert [(r["state"], r["exit_code"]) for r in stopped] == [("stopped", 0)] * 2  # graceful


def test_a_command_that_cannot_run_fails_at_once(project: Project) -> None:
    project.write({"ghost": {"kind": "command", "command": ["/nonexistent/program", "{port}"]}})
    result = project.run("up", "--json")
    assert result.returncode == 1
    assert '"outcome": "failed"' in result.stdout
    ghost = project.replica("ghost")
    assert ghost["state"] == "failed"
    assert "cannot start '/nonexistent/program'" in ghost["reason"]


def test_not_ready_in_time_is_a_failure_and_the_process_is_stopped(project: Project) -> None:
    project.write({"slow": tiny("--never-ready", startup_timeout=1)})
    result = project.run("up")
    assert result.returncode == 1
    assert "slow-0 failed: not ready within 1s" in result.stderr
    slow = project.recorded("slow")
    assert (slow["state"], slow["pid"], slow["restarts"]) == ("failed", None, 0)
    started = project.recorded_log_pids("slow")
    assert started and all(gone(p) for p in started)


def test_up_gives_up_waiting_after_its_timeout(project: Project) -> None:
    project.write({"slow": tiny("--never-ready")})
    result = project.run("up", "--timeout", "0.1", "--json")
    assert result.returncode == 1
    assert "not ready within 0.1s: slow-0" in result.stderr
    assert '"outcome": "timeout"' in result.stdout
    # still running (down stops it); a supervisor slow to start may not have written state yet
    wait_until(lambda: len(project.recorded_pids()) == 2, what="slow-0's process in state.json")
    assert project.recorded("slow")["state"] == "starting"
