"""The CLI around the supervisor: init, logs, config errors, help, exit codes."""

from __future__ import annotations

import json
import threading

import httpx
from supervisor_helpers import Project, tiny, wait_until
from typer.testing import CliRunner

from microhive import __version__
from microhive.cli import app
from microhive.config import load_config

COMMANDS = ["init", "up", "status", "down", "logs", "serve"]


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in [[], *([c] for c in COMMANDS)]:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output
    bare = runner.invoke(app, [])
    assert "Usage" in bare.output
    assert all(c in bare.output for c in COMMANDS)
    version = runner.invoke(app, ["--version"])
    assert (version.exit_code, version.output.split()) == (0, ["microhive", __version__])


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(project: Project) -> None:
    result = project.run("init")
    assert result.returncode == 0, result.stderr
    path = project.dir / "microhive.yaml"
    text = path.read_text()
    assert text.lstrip().startswith("#")  # commented
    load_config(path, env={})  # and valid as written

    again = project.run("init")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "--force" in again.stderr
    path.write_text("# mine\n")
    forced = project.run("init", "--force")
    assert forced.returncode == 0
    assert path.read_text() == text

    other = project.run("init", "-f", "sub/mesh.yaml")
    assert other.returncode == 0
    assert (project.dir / "sub" / "mesh.yaml").read_text() == text


def test_unknown_key_is_refused_with_file_line_and_field(project: Project) -> None:
    (project.dir / "microhive.yaml").write_text(
        "name: test\nservices:\n  web:\n    kind: command\n    command: [x]\n    colour: blue\n"
    )
    for command in ("up", "serve web"):
        result = project.run(*command.split())
        assert result.returncode == 2, (command, result.stderr)
        assert "microhive.yaml:6" in result.stderr
        assert "services.web.colour" in result.stderr
        assert "unknown key" in result.stderr
    assert not (project.dir / ".microhive").exists()


def test_a_missing_mesh_file_is_a_usage_error(project: Project) -> None:
    runner = CliRunner()
    missing = str(project.dir / "microhive.yaml")
    commands = [["up", "-f", missing], ["status", "-f", missing], ["down", "-f", missing],
                ["logs", "web", "--file", missing], ["serve", "web", "-f", missing]]  # fmt: skip
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "microhive init" in result.output


def test_bad_restart_setting_is_a_usage_error(project: Project) -> None:
    project.write({"web": tiny()})
    result = project.run("up", MICROHIVE_MAX_RESTARTS="lots")
    assert result.returncode == 2
    assert "MICROHIVE_MAX_RESTARTS" in result.stderr


def test_serve_names_an_unknown_service(project: Project) -> None:
    project.write({"web": tiny()})
    result = project.run("serve", "nope")
    assert result.returncode in (1, 2)
    assert "nope" in result.stderr


def test_logs_show_follow_and_name_an_unknown_service(project: Project) -> None:
    project.write({"echo": tiny(replicas=2)})
    started = project.run("up", "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["outcome"] == "ready"
    ports = {r["replica"]: r["port"] for r in project.state()["replicas"]}
    assert len(set(ports.values())) == 2

    both = project.run("logs", "echo", "-n", "200")
    assert both.returncode == 0, both.stderr
    assert "echo-0 | listening on" in both.stdout
    assert "echo-1 | listening on" in both.stdout

    one = project.run("logs", "echo", "--replica", "1", "-n", "1")
    assert one.returncode == 0
    assert len(one.stdout.splitlines()) == 1
    assert "echo-0" not in one.stdout

    assert project.run("logs", "nope").returncode == 2
    assert project.run("logs", "echo", "--replica", "7").returncode == 1

    follower = project.popen("logs", "echo", "--replica", "0", "-n", "0", "-f")
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follower.stdout.readline, "")))
    reader.start()
    marker = f"/followed-{ports[0]}"

    def followed() -> bool:
        # keep making log lines: the follower may not have opened the file yet
        with httpx.Client(trust_env=False) as client:
            client.get(f"http://127.0.0.1:{ports[0]}{marker}")
        return any(marker in line for line in seen)

    try:
        wait_until(followed, what="a new log line to be followed")
        assert all(line.startswith("request") for line in seen)  # only new lines, no prefix
    finally:
        follower.terminate()
        follower.communicate(timeout=10)
        reader.join(timeout=10)
