"""Process life: graceful shut-down on a real SIGTERM, and clear start-up failures."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from microhive.service import EXIT_CONFIG

from .conftest import ServiceProcess, launch, wait_until, write_mesh


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _sample(folder: Path, grace: float = 10.0) -> Path:
    return write_mesh(
        folder,
        {
            "sample": {
                "kind": "app",
                "app": "sample_app:create",
                "grace_period": grace,
                "settings": {
                    "marker_dir": str(folder),
                    "shutdown_file": str(folder / "shutdown-ran"),
                },
            }
        },
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_the_in_flight_request_finish_and_exits_0(
    tmp_path: Path, start_service: Callable[..., ServiceProcess], sig: signal.Signals
) -> None:
    svc = start_service(_sample(tmp_path), "sample")
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=svc.url, timeout=30) as client:
        in_flight = pool.submit(client.get, "/slow")
        wait_until((tmp_path / "started").exists, what="the slow request to be in flight")

        svc.popen.send_signal(sig)
        # The listener closes at once: new connections are refused while the
        # in-flight request is still being worked on (it waits for our release).
        wait_until(lambda: _refused(svc.port), what="new connections to be refused")
        assert svc.popen.poll() is None, "the process must wait for the in-flight request"
        assert not in_flight.done()

        (tmp_path / "release").write_text("go")
        response = in_flight.result(timeout=30)
    assert response.status_code == 200
    assert response.json() == {"finished": True}
    assert svc.popen.wait(timeout=30) == 0
    assert (tmp_path / "shutdown-ran").read_text() == "shutdown hook ran"
    assert not svc.port_file.exists(), "the port file is removed on a clean exit"
    messages = [r["msg"] for r in svc.log_records()]
    assert f"received {sig.name}: draining" in messages
    assert "service 'sample' stopped" in messages


def test_a_request_outliving_the_grace_period_is_cut_off(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    svc = start_service(_sample(tmp_path, grace=0.5), "sample")
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=svc.url, timeout=30) as client:
        stuck = pool.submit(client.get, "/forever")
        wait_until((tmp_path / "started").exists, what="the request to be in flight")
        svc.terminate()
        assert svc.popen.wait(timeout=30) == 0
        response = stuck.result(timeout=30)
    assert response.status_code == 503
    assert response.json()["error"] == "cancelled"
    assert (tmp_path / "shutdown-ran").exists(), "shutdown hooks still run after the cut-off"


def test_a_plain_asgi_factory_is_wrapped_and_gets_its_lifespan(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    mesh = write_mesh(tmp_path, {"plain": {"kind": "app", "app": "sample_app:create_plain"}})
    svc = start_service(mesh, "plain")
    with httpx.Client(base_url=svc.url, timeout=10) as client:
        assert client.get("/healthz").json()["service"] == "plain"
        assert client.get("/readyz").status_code == 200
        assert client.get("/hello").text == "plain /hello started=True"
        assert 'route="/*"' in client.get("/metrics").text
    svc.terminate()
    assert svc.popen.wait(timeout=30) == 0


def test_port_in_use_is_a_clear_error_with_exit_code_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = launch(_sample(tmp_path), "sample", port=port)
        assert proc.popen.wait(timeout=30) == 3
    text = proc.log_text()
    assert f"port {port} on 127.0.0.1 is already in use" in text
    assert "Traceback" not in text


def test_bad_app_path_and_unknown_service_exit_78_with_the_field(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path, {"broken": {"kind": "app", "app": "no_such_module_here:create"}})
    proc = launch(mesh, "broken")
    assert proc.popen.wait(timeout=30) == EXIT_CONFIG == 78  # EX_CONFIG: not worth a restart
    text = proc.log_text()
    assert "microhive.yaml: services.broken.app" in text
    assert "no_such_module_here" in text
    assert "Traceback" not in text

    other = launch(mesh, "nosuch")
    assert other.popen.wait(timeout=30) == EXIT_CONFIG
    assert "no service named 'nosuch'" in other.log_text()
    assert "broken" in other.log_text()


def test_failing_startup_hook_exits_1_with_its_reason(tmp_path: Path) -> None:
    mesh = write_mesh(
        tmp_path, {"flaky": {"kind": "app", "app": "sample_app:create_failing_startup"}}
    )
    proc = launch(mesh, "flaky")
    assert proc.popen.wait(timeout=30) == 1
    text = proc.log_text()
    assert "cannot reach the imaginary database" in text
    assert "service 'flaky' failed to start" in text
    assert not proc.port_file.exists()


def test_missing_token_variable_refuses_to_start(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path, {"sample": {"kind": "app", "app": "sample_app:create"}}, token=True)
    proc = launch(mesh, "sample", env={"MICROHIVE_TEST_SERVICE_TOKEN": ""})
    assert proc.popen.wait(timeout=30) == EXIT_CONFIG
    assert "security.token_env" in proc.log_text()
