"""A configuration error (exit code 78) is reported in one line and never restarted.

Real processes and the real CLI: a worker whose model's API key is not set, run by
``microhive up`` as ``microhive serve``; and a service that was ready, then exits
with 78, which a restart could not fix.
"""

from __future__ import annotations

from supervisor_helpers import Project, tiny, wait_until

KEY_ENV = "MICROHIVE_TEST_NOPE_KEY"
MISSING = (
    f"the openai model 'x' needs an API key in the environment variable {KEY_ENV}, which is not set"
)


def test_a_missing_model_key_fails_the_worker_in_one_readable_line(project: Project) -> None:
    project.write(
        {
            "worker": {"kind": "worker", "settings": {"role": "researcher", "gateway": None}},
            "after": tiny(depends_on=["worker"]),
        },
        models={"remote": {"provider": "openai", "model": "x", "api_key_env": KEY_ENV}},
        roles={"researcher": {"model": "remote"}},
    )
    result = project.run("up")
    assert result.returncode == 1, result.stderr
    # the line itself, readable: not a JSON-escaped traceback, not the whole log tail
    assert f"worker-0 failed: {MISSING}" in result.stderr
    assert "Traceback" not in result.stderr
    assert '\\"' not in result.stderr and "\\n" not in result.stderr
    assert '"level"' not in result.stderr

    worker = project.replica("worker")
    assert (worker["state"], worker["restarts"], worker["exit_code"]) == ("failed", 0, 78)
    assert worker["reason"].startswith(MISSING)
    assert project.replica("after")["state"] == "blocked"

    shown = project.run("status")
    assert f"worker-0 failed: {MISSING}" in shown.stderr
    log = (project.state_dir / "logs" / "worker-0.log").read_text()
    assert "Traceback" not in log
    assert log.count("--- microhive") == 1


def test_a_configuration_error_after_ready_is_final_not_a_crash_loop(project: Project) -> None:
    project.write({"frob": tiny("--config-error-after", "0.6")})
    result = project.run("up", MICROHIVE_RESTART_BACKOFF="0.05")
    assert result.returncode == 0, result.stderr  # it was ready once
    wait_until(
        lambda: project.recorded("frob")["state"] == "failed", what="the replica to be failed"
    )
    frob = project.replica("frob")
    assert (frob["restarts"], frob["exit_code"]) == (0, 78)
    assert frob["reason"] == "the variable FROB_KEY is not set"
    status = project.run("status")
    assert "frob-0 failed: the variable FROB_KEY is not set" in status.stderr
    assert project.run("down").returncode == 0
    log = (project.state_dir / "logs" / "frob-0.log").read_text()
    assert log.count("--- microhive") == 1  # started once, never restarted
