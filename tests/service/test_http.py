"""A real service process over real sockets: probes, metrics, auth, limits, call context, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import TOKEN, TOKEN_ENV, ServiceProcess, launch, wait_until, write_mesh

AUTH = {"authorization": f"Bearer {TOKEN}"}
LIMIT = 4096


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secured")


@pytest.fixture(scope="module")
def svc(folder: Path) -> Iterator[ServiceProcess]:
    mesh = write_mesh(
        folder,
        {
            "sample": {
                "kind": "app",
                "app": "sample_app:create",
                "max_body_bytes": LIMIT,
                "settings": {"ready_file": str(folder / "ready"), "marker_dir": str(folder)},
            }
        },
        token=True,
    )
    proc = launch(mesh, "sample", env={TOKEN_ENV: TOKEN})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.close()


@pytest.fixture
def client(svc: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc.url, timeout=10) as c:
        yield c


# ---------------------------------------------------------------- probes


def test_healthz_answers_without_a_token(client: httpx.Client, svc: ServiceProcess) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["service"] == "sample"
    assert body["replica"] == 0
    assert body["pid"] == svc.popen.pid
    assert body["uptime"] >= 0


def test_readyz_names_the_failing_check_then_turns_ready(
    client: httpx.Client, folder: Path
) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not_ready"
    assert body["checks"] == [
        {"name": "flag", "ok": False, "error": "ServiceUnavailable: ready is missing"}
    ]
    assert "flag" in body["message"]

    (folder / "ready").write_text("yes")
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == [{"name": "flag", "ok": True, "error": None}]


def test_port_file_holds_the_ephemeral_port(svc: ServiceProcess) -> None:
    assert svc.port > 0
    records = svc.log_records()
    assert any(r["msg"] == f"ready on http://127.0.0.1:{svc.port}" for r in records)


# ---------------------------------------------------------------- metrics


def test_metrics_need_the_token_and_hold_the_request_histogram(client: httpx.Client) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.post("/echo", content=b"abc", headers=AUTH).status_code == 200
    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE microhive_http_request_duration_seconds histogram" in text
    assert (
        'microhive_http_request_duration_seconds_bucket{le="+Inf",method="POST",'
        'route="/echo",status="200"}' in text
    )
    assert 'microhive_http_requests_total{method="POST",route="/echo",status="200"}' in text
    assert "microhive_http_requests_in_flight" in text
    # A request refused before routing is counted under a bounded label, not its raw path.
    assert (
        'microhive_http_errors_total{error="unauthorized",method="GET",route="<unmatched>"}' in text
    )


# ------------------------------------------------------------------- auth


def test_auth_refuses_a_missing_or_wrong_token(client: httpx.Client) -> None:
    missing = client.post("/echo", content=b"x")
    assert missing.status_code == 401
    assert missing.json() == {"error": "unauthorized", "message": "missing bearer token"}
    assert missing.headers["www-authenticate"].startswith("Bearer")

    wrong = client.post("/echo", content=b"x", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]

    basic = client.post("/echo", content=b"x", headers={"authorization": "Basic dTpw"})
    assert basic.status_code == 401

    ok = client.post("/echo", content=b"x", headers=AUTH)
    assert ok.status_code == 200
    assert ok.json() == {"size": 1}


# ----------------------------------------------------------------- limits


def test_declared_body_over_the_limit_is_413(client: httpx.Client) -> None:
    r = client.post("/echo", content=b"x" * (LIMIT + 1), headers=AUTH)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert str(LIMIT) in r.json()["message"]
    assert client.post("/echo", content=b"x" * LIMIT, headers=AUTH).json() == {"size": LIMIT}


def test_chunked_body_growing_past_the_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(16):
            yield b"y" * 1024

    r = client.post("/echo", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"

    def small() -> Iterator[bytes]:
        yield b"a" * 100
        yield b"b" * 100

    assert client.post("/echo", content=small(), headers=AUTH).json() == {"size": 200}


# ----------------------------------------------------------- call context


def test_malformed_hops_header_is_400_naming_it(client: httpx.Client) -> None:
    r = client.get("/ctx", headers={**AUTH, "microhive-hops": "many"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_context"
    assert "microhive-hops" in body["message"]


def test_no_hops_left_is_508(client: httpx.Client) -> None:
    r = client.get("/ctx", headers={**AUTH, "microhive-hops": "0", "microhive-max-hops": "4"})
    assert r.status_code == 508
    assert r.json()["error"] == "hop_limit"


def test_passed_deadline_is_504(client: httpx.Client) -> None:
    r = client.get("/ctx", headers={**AUTH, "microhive-deadline": str(time.time() - 5)})
    assert r.status_code == 504
    assert r.json()["error"] == "deadline_exceeded"


def test_spent_budget_is_429(client: httpx.Client) -> None:
    r = client.get("/ctx", headers={**AUTH, "microhive-budget-steps": "0"})
    assert r.status_code == 429
    assert r.json()["error"] == "budget_exhausted"


def test_handler_sees_the_context_and_logs_carry_the_trace_id(
    client: httpx.Client, svc: ServiceProcess
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    r = client.get("/ctx", headers={**AUTH, "traceparent": traceparent, "microhive-hops": "5"})
    assert r.status_code == 200
    assert r.json() == {"hops": 5, "trace_id": trace_id}

    def logged() -> list[dict[str, object]]:
        return [r for r in svc.log_records() if r.get("trace_id") == trace_id]

    lines = wait_until(logged, what="log lines with the incoming trace id")
    handler_line = next(r for r in lines if r["msg"] == "handled ctx")
    assert handler_line["logger"] == "sample"
    assert handler_line["service"] == "sample"
    assert handler_line["replica"] == 0
    assert handler_line["hops"] == 5
    wait_until(
        lambda: any(
            r["logger"] == "microhive.access" and r.get("path") == "/ctx" for r in logged()
        ),
        what="the access log line with the trace id",
    )
    access = next(r for r in logged() if r["logger"] == "microhive.access")
    assert access["method"] == "GET"
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], float)


def test_a_request_without_a_trace_still_gets_a_trace_id(client: httpx.Client) -> None:
    r = client.get("/ctx", headers=AUTH)
    assert r.status_code == 200
    trace_id = r.json()["trace_id"]
    assert isinstance(trace_id, str)
    assert len(trace_id) == 32


# ----------------------------------------------------------------- errors


def test_microhive_errors_become_json_with_their_status(client: httpx.Client) -> None:
    r = client.get("/missing", headers=AUTH)
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "message": "no such thing: widget 42"}

    r = client.get("/unavailable", headers=AUTH)
    assert r.status_code == 503
    assert r.json()["error"] == "service_unavailable"
    assert r.headers["retry-after"] == "1"

    r = client.get("/no/such/route", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_unknown_errors_are_500_without_internals_and_logged_with_traceback(
    client: httpx.Client, svc: ServiceProcess
) -> None:
    r = client.get("/boom", headers=AUTH)
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal"
    assert "hunter2" not in r.text
    assert "RuntimeError" not in r.text

    def traceback_logged() -> dict[str, object] | None:
        for record in svc.log_records():
            if "unhandled error in GET /boom" in str(record["msg"]):
                return record
        return None

    record = wait_until(traceback_logged, what="the logged traceback")
    assert record["level"] == "error"
    assert "RuntimeError: secret internals" in str(record["exc"])
    assert str(record["trace_id"]) in body["message"]
