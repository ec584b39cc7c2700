"""The service runtime driven in-process: context, factories, wrapping, readiness, logging."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

import microhive.service as service_pkg
from microhive.config import MeshConfig, parse_config
from microhive.context import CallContext
from microhive.errors import (
    BudgetExhausted,
    Cancelled,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    HopLimitExceeded,
    InvalidContext,
    InvalidInput,
    MissingDependency,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TimeoutFailure,
    UpstreamError,
    UsageError,
)
from microhive.service import (
    Service,
    ServiceContext,
    build_service,
    configure_logging,
    resolve_factory,
    status_for,
)

MESH = """
version: 1
host: 127.0.0.1
security:
  token_env: SVC_TOKEN
services:
  api:
    kind: app
    app: tests_missing_module:create
    port: 9100
    replicas: 2
    grace_period: 3
    max_body_bytes: 2048
  job:
    kind: command
    command: [echo, hi]
"""


@pytest.fixture
def mesh() -> MeshConfig:
    return parse_config(MESH, file="microhive.yaml")


def _client(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.asgi()), base_url="http://svc"
    )


# ---------------------------------------------------------------- context


def test_context_from_mesh_fills_in_port_host_token_and_state(mesh: MeshConfig) -> None:
    ctx = ServiceContext.from_mesh(
        mesh, "api", replica=1, config_path="proj/microhive.yaml", env={"SVC_TOKEN": "t0k"}
    )
    assert (ctx.port, ctx.host, ctx.token) == (9101, "127.0.0.1", "t0k")
    assert ctx.state_dir.as_posix() == "proj/.microhive"
    assert ctx.port_file.as_posix() == "proj/.microhive/ports/api-1.port"
    assert ctx.spec.max_body_bytes == 2048

    override = ServiceContext.from_mesh(mesh, "api", port=0, host="::1", env={"SVC_TOKEN": "t0k"})
    assert (override.port, override.host) == (0, "::1")


def test_context_refuses_what_the_mesh_does_not_have(mesh: MeshConfig) -> None:
    with pytest.raises(NotFound, match="no service named 'web'"):
        ServiceContext.from_mesh(mesh, "web", env={"SVC_TOKEN": "x"})
    with pytest.raises(UsageError, match="no replica 2"):
        ServiceContext.from_mesh(mesh, "api", replica=2, env={"SVC_TOKEN": "x"})
    with pytest.raises(ConfigError, match=r"security\.token_env: .*SVC_TOKEN"):
        ServiceContext.from_mesh(mesh, "api", env={})


# -------------------------------------------------------------- factories


def test_resolve_factory_names_the_field_on_every_mistake(mesh: MeshConfig) -> None:
    with pytest.raises(ConfigError, match=r"services\.api\.app: cannot import 'tests_missing"):
        resolve_factory(mesh.services["api"], "api", "microhive.yaml")
    with pytest.raises(ConfigError, match="runs a command"):
        resolve_factory(mesh.services["job"], "job")

    no_attr = mesh.services["api"].model_copy(update={"app": "json:no_such_factory"})
    with pytest.raises(ConfigError, match="module 'json' has no attribute 'no_such_factory'"):
        resolve_factory(no_attr, "api")
    not_callable = mesh.services["api"].model_copy(update={"app": "json:__doc__"})
    with pytest.raises(ConfigError, match="not callable"):
        resolve_factory(not_callable, "api")
    good = mesh.services["api"].model_copy(update={"app": "json:dumps"})
    assert resolve_factory(good, "api") is json.dumps


async def _plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hello from lifespan"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    greeting = scope.get("state", {}).get("greeting", "no lifespan")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{scope['path']}: {greeting}".encode()})


async def test_a_plain_asgi_app_is_wrapped_with_probes_and_its_lifespan(
    mesh: MeshConfig,
) -> None:
    ctx = ServiceContext.from_mesh(mesh, "api", env={"SVC_TOKEN": "t0k"})
    service = build_service(lambda _ctx: _plain_app, ctx)
    assert isinstance(service, Service)
    assert (service.name, service.token, service.max_body_bytes) == ("api", "t0k", 2048)
    auth = {"authorization": "Bearer t0k"}
    async with service.running() as state, _client(service) as client:
        assert state == {"greeting": "hello from lifespan"}
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json()["status"] == "ready"
        assert (await client.get("/anything")).status_code == 401
        r = await client.get("/anything", headers=auth)
        assert r.text.startswith("/anything: ")
        metrics = (await client.get("/metrics", headers=auth)).text
    assert 'route="/*"' in metrics


def test_a_factory_must_return_a_service_or_an_asgi_app(mesh: MeshConfig) -> None:
    ctx = ServiceContext.from_mesh(mesh, "api", env={"SVC_TOKEN": "t0k"})
    with pytest.raises(ConfigError, match="expected a Service or an ASGI app"):
        build_service(lambda _ctx: 42, ctx)

    async def coroutine_factory(_ctx: ServiceContext) -> Service:
        return Service(_ctx)

    with pytest.raises(ConfigError, match="plain 'def'"):
        build_service(coroutine_factory, ctx)


# ---------------------------------------------------------------- service


async def test_readyz_turns_503_once_shutdown_begins() -> None:
    service = Service(name="probe")
    async with service.running(), _client(service) as client:
        assert (await client.get("/readyz")).status_code == 200
        service.begin_shutdown()
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "shutting_down"
        assert (await client.get("/healthz")).status_code == 200, "still alive while draining"


async def test_ready_checks_report_each_dependency_by_name() -> None:
    service = Service(name="deps")

    async def database() -> None:
        return None

    async def cache() -> bool:
        return False

    async def queue() -> None:
        raise ConnectionRefusedError("nats at 127.0.0.1:4222 refused")

    for name, check in (("database", database), ("cache", cache), ("queue", queue)):
        service.add_ready_check(name, check)
    with pytest.raises(UsageError, match="already has a ready check named 'queue'"):
        service.add_ready_check("queue", queue)

    async with _client(service) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"] == [
        {"name": "database", "ok": True, "error": None},
        {"name": "cache", "ok": False, "error": "check returned False"},
        {
            "name": "queue",
            "ok": False,
            "error": "ConnectionRefusedError: nats at 127.0.0.1:4222 refused",
        },
    ]
    assert r.json()["message"] == "not ready: cache, queue"


async def test_hooks_run_in_order_and_shutdown_hooks_in_reverse() -> None:
    service = Service(name="hooks")
    calls: list[str] = []

    async def record(what: str) -> None:
        calls.append(what)

    service.on_startup(lambda: record("start a"))
    service.on_startup(lambda: record("start b"))
    service.on_shutdown(lambda: record("stop a"))

    async def failing() -> None:
        raise RuntimeError("shutdown hook failure does not stop the others")

    service.on_shutdown(failing)
    service.on_shutdown(lambda: record("stop c"))
    async with service.running():
        assert calls == ["start a", "start b"]
    assert calls == ["start a", "start b", "stop c", "stop a"]


async def test_sync_and_async_handlers_and_json_results() -> None:
    service = Service(name="routes")

    @service.route("/sync")
    def sync(request: Request) -> dict[str, Any]:
        return {"hops": CallContext.current().hops}

    @service.route("/items/{item}", methods=["GET", "DELETE"])
    async def item(request: Request) -> list[str]:
        return [request.method, request.path_params["item"]]

    async with _client(service) as client:
        assert (await client.get("/sync", headers={"microhive-hops": "3"})).json() == {"hops": 3}
        assert (await client.delete("/items/7")).json() == ["DELETE", "7"]
        r = await client.post("/items/7")
        assert r.status_code == 405
        assert r.json()["error"] == "method_not_allowed"
        metrics = (await client.get("/metrics")).text
    assert 'route="/items/{item}"' in metrics
    with pytest.raises(UsageError, match="already built"):
        service.add_route("/late", sync)


def test_a_service_needs_a_context_or_a_name() -> None:
    with pytest.raises(UsageError, match="ServiceContext or a name"):
        Service()


def test_each_service_has_its_own_registry() -> None:
    one, two = Service(name="one"), Service(name="two")
    assert one.registry is not two.registry
    jobs = one.metrics.counter("microhive_jobs", "Jobs done.", ["kind"])
    jobs.labels("index").inc()
    assert b'microhive_jobs_total{kind="index"} 1.0' in one.metrics.render()
    assert b"microhive_jobs" not in two.metrics.render()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("x"), 400),
        (InvalidContext("x"), 400),
        (PayloadTooLarge("x"), 413),
        (NotFound("x"), 404),
        (ConfigError("x"), 500),
        (MissingDependency("p", "e", "x"), 500),
        (HopLimitExceeded("x"), 508),
        (DeadlineExceeded("x"), 504),
        (BudgetExhausted("x"), 429),
        (Cancelled("x"), 503),
        (ServiceUnavailable("x"), 503),
        (TimeoutFailure("x"), 504),
        (Conflict("x"), 409),
        (UpstreamError("x"), 502),
    ],
)
def test_errors_map_to_http_statuses(error: Exception, status: int) -> None:
    assert status_for(error) == status  # type: ignore[arg-type]


# ---------------------------------------------------------------- logging


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging("logsvc", 2, "DEBUG", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_json_log_lines_carry_service_trace_and_extras(log_stream: io.StringIO) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    ctx = CallContext.from_headers({"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    log = logging.getLogger("microhive.test")
    log.info("outside")
    with ctx.activate():
        log.warning("inside %s", "ctx", extra={"files": 3})
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == ["outside", "inside ctx", "failed"]
    outside, inside, failed = lines
    assert outside["trace_id"] is None
    assert inside["trace_id"] == trace_id
    assert inside["span_id"] == "b7ad6b7169203331"
    assert inside["level"] == "warning"
    assert (inside["service"], inside["replica"], inside["files"]) == ("logsvc", 2, 3)
    assert inside["ts"].endswith("Z")
    assert "ValueError: bad" in failed["exc"]


def test_configure_logging_twice_keeps_one_handler(log_stream: io.StringIO) -> None:
    second = io.StringIO()
    handler = configure_logging("logsvc", 0, stream=second)
    try:
        logging.getLogger("microhive.test").info("once")
        assert log_stream.getvalue() == ""
        assert second.getvalue().count("once") == 1
    finally:
        logging.getLogger().removeHandler(handler)


# ------------------------------------------------------------- public API


def test_public_surface_is_curated() -> None:
    exported = set(service_pkg.__all__)
    assert {
        "Service",
        "ServiceContext",
        "serve_service",
        "run_app",
        "configure_logging",
    } <= exported
    for name in exported:
        assert hasattr(service_pkg, name), name
        assert not name.startswith("_")
    public = {n for n in vars(service_pkg) if not n.startswith("_")}
    assert public - exported == set(), "modules and helpers stay private"
