"""The bus and the workspace in a trace: publish and process spans across real processes.

A publisher process and a consumer process (``bus_child.py``, each with its
tracer provider installed as ``microhive serve`` does) share an embedded bus and
a trace store. The consumer's ``process`` span is the child of -- and linked
to -- the publisher's ``publish`` span, the handler's span is its child, a
failed first delivery and its redelivery are both in the publisher's trace,
and a message that arrives with no hops left is dead-lettered with
``loop_stopped`` on its span. A write to a real workspace service leads to the
``file.created`` publish, a subscriber's process span and the webhook delivery
span, all in the writer's trace. Without a provider the bus adds no span and
changes no header.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from opentelemetry import trace
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.bus.conftest import drop_nats_namespace, drop_redis_namespace
from tests.conftest import free_port
from tests.workspace.wshelp import Server, eventually

from microhive.bus import Delivery, open_bus, register_bus_metrics
from microhive.config import parse_config
from microhive.context import CallContext
from microhive.service import Service, ServiceContext, resolve_factory
from microhive.tracing import StoredSpan, TraceStore

CHILD = Path(__file__).with_name("bus_child.py")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
MCP_TRACE = "7d2c6a1f0b9e48e3a5c4d3b2a1908f7e"


def _run(job: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _spans(store_url: str, trace_id: str) -> list[StoredSpan]:
    with TraceStore(store_url) as store:
        return store.spans(trace_id)


def _one(spans: list[StoredSpan], name: str) -> StoredSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


# ------------------------------------------------------------ two processes


@pytest.fixture(scope="module")
def bus_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Publish three messages in one process, consume them in another."""
    root = tmp_path_factory.mktemp("bus-trace")
    common = {"store": f"sqlite:///{root / 'traces.db'}", "bus": f"embedded://{root / 'bus'}"}
    messages = [{"subject": "bt.ok"}, {"subject": "bt.flaky"}, {"subject": "bt.loop", "hops": 1}]
    published = _run({**common, "role": "publish", "service": "producer", "messages": messages})
    consumed = _run(
        {
            **common,
            "role": "consume",
            "service": "consumer",
            "pattern": "bt.>",
            "group": "bt",
            "flaky": ["bt.flaky"],
            "handled": 2,
            "dead": 1,
        }
    )
    ok, flaky, loop = published["traces"]
    return {**common, "ok": ok, "flaky": flaky, "loop": loop, "seen": consumed["seen"]}


def test_consumer_process_span_and_handler_span_are_in_the_publishers_trace(
    bus_run: dict[str, Any],
) -> None:
    spans = _spans(bus_run["store"], bus_run["ok"])
    root = _one(spans, "POST /publish")
    publish = _one(spans, "publish bt.ok")
    process = _one(spans, "process bt.ok")
    handler = _one(spans, "execute_tool handle")
    assert (publish.service, publish.kind, publish.parent_id) == (
        "producer",
        "PRODUCER",
        root.span_id,
    )
    assert publish.attributes["messaging.system"] == "embedded"
    assert publish.attributes["messaging.destination.name"] == "bt.ok"
    assert (process.service, process.kind) == ("consumer", "CONSUMER")
    assert process.parent_id == publish.span_id
    assert [(link["trace_id"], link["span_id"]) for link in process.links] == [
        (bus_run["ok"], publish.span_id)
    ]
    assert process.attributes["messaging.consumer.group.name"] == "bt"
    assert process.attributes["microhive.delivery_attempt"] == 1
    assert process.attributes["messaging.message.id"] == publish.attributes["messaging.message.id"]
    assert process.attributes["microhive.hops"] == 15  # one hop fewer than the publisher had
    assert (handler.service, handler.parent_id) == ("consumer", process.span_id)
    assert not process.error and not handler.error
    # The handler's msg.context names the process span as its parent.
    seen = {subject: parent for subject, attempt, parent in bus_run["seen"] if attempt == 1}
    assert seen["bt.ok"].split("-")[2] == process.span_id


def test_a_redelivered_message_stays_in_the_trace(bus_run: dict[str, Any]) -> None:
    spans = _spans(bus_run["store"], bus_run["flaky"])
    publish = _one(spans, "publish bt.flaky")
    attempts = sorted(
        (s for s in spans if s.name == "process bt.flaky"),
        key=lambda s: s.attributes["microhive.delivery_attempt"],
    )
    assert [s.attributes["microhive.delivery_attempt"] for s in attempts] == [1, 2]
    assert {s.parent_id for s in attempts} == {publish.span_id}
    first, second = attempts
    assert first.error and first.attributes["error.type"] == "RuntimeError"
    assert "the first attempt fails" in (first.status_message or "")
    assert not second.error
    handlers = [s for s in spans if s.name == "execute_tool handle"]
    assert sorted(h.parent_id or "" for h in handlers) == sorted([first.span_id, second.span_id])


def test_a_hop_limit_dead_letter_shows_loop_stopped(bus_run: dict[str, Any]) -> None:
    spans = _spans(bus_run["store"], bus_run["loop"])
    process = _one(spans, "process bt.loop")
    assert process.error
    assert [e["name"] for e in process.events] == ["loop_stopped"]
    assert process.attributes["microhive.dlq.code"] == "hop_limit"
    assert process.attributes["microhive.hops"] == 0
    assert not [s for s in spans if s.name == "execute_tool handle"]  # never reached the handler
    assert "bt.loop" not in {subject for subject, _, _ in bus_run["seen"]}


# ------------------------------------------------------------ no provider


async def test_without_a_provider_publish_and_consume_are_unchanged() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    got: list[tuple[dict[str, str], int, bool]] = []
    done = asyncio.Event()
    async with open_bus("memory://") as bus:

        async def handle(msg: Delivery) -> None:
            got.append((dict(msg.headers), msg.deliveries, trace.get_current_span().is_recording()))
            if msg.deliveries == 1:
                raise RuntimeError("retry me")
            done.set()

        await bus.subscribe("plain.>", handle, queue="plain", backoff=(0.01,))
        ctx = CallContext.from_headers({"traceparent": caller})
        with ctx.activate():
            await bus.publish("plain.x", {"n": 1})
        await asyncio.wait_for(done.wait(), 10)
    assert [deliveries for _, deliveries, _ in got] == [1, 2]
    headers = got[0][0]
    assert headers["traceparent"] == caller  # no publish span: the caller's parent as is
    assert headers["microhive-hops"] == "15"
    assert not any(recording for _, _, recording in got)


# ------------------------------------------------------------ /metrics


@pytest.fixture(params=["memory", "embedded", "nats", "redis"])
async def any_bus_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    ns = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "memory":
        yield "memory://"
    elif request.param == "embedded":
        yield f"embedded://{tmp_path / 'bus'}"
    elif request.param == "nats":
        server = request.getfixturevalue("nats_url")
        yield f"{server}?namespace={ns}"
        await drop_nats_namespace(server, ns)
    else:
        server = request.getfixturevalue("redis_url")
        yield f"{server}?namespace={ns}"
        await drop_redis_namespace(server, ns)


def _sample(registry: CollectorRegistry, name: str) -> float | None:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(name + "{") and 'consumer="depth"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_show_queue_depth_and_handlers_in_flight(any_bus_url: str) -> None:
    registry = CollectorRegistry()
    release = asyncio.Event()
    async with open_bus(any_bus_url) as bus:
        register_bus_metrics(registry, bus)

        async def slow(msg: Delivery) -> None:
            await release.wait()

        await bus.subscribe("depth.>", slow, queue="depth", start="beginning", concurrency=1)
        for i in range(3):
            await bus.publish("depth.x", {"i": i})

        async def reads(waiting: float, unacked: float, in_flight: float) -> bool:
            now = (
                _sample(registry, "microhive_bus_pending_messages"),
                _sample(registry, "microhive_bus_unacked_messages"),
                _sample(registry, "microhive_bus_handlers_in_flight"),
            )
            return now == (waiting, unacked, in_flight)

        # One message is in the handler, two wait (the backlog refreshes in the background).
        await eventually(lambda: reads(2, 1, 1), what="backlog 2, one in flight")
        release.set()
        await eventually(lambda: reads(0, 0, 0), what="an empty backlog")
        assert _sample(registry, "microhive_bus_messages_total") is not None


# ------------------------------------------------------------ the workspace


def _serve(folder: Path, name: str) -> subprocess.Popen[bytes]:
    """``microhive serve NAME`` in ``folder``, as the supervisor starts it."""
    with open(folder / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "microhive", "serve", name, "-f", "microhive.yaml"],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )


class _Receiver:
    """A webhook endpoint that records the requests it gets."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def hook(self, request: Request) -> Response:
        await request.body()
        self.requests.append(dict(request.headers))
        return Response(status_code=204)


async def test_a_workspace_write_event_and_webhook_are_in_the_writers_trace(
    tmp_path: Path,
) -> None:
    receiver = _Receiver()
    server = await Server(
        Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    ).start()
    port = free_port()
    store = f"sqlite:///{tmp_path / 'traces.db'}"
    bus = f"embedded://{tmp_path / 'bus'}"
    (tmp_path / "microhive.yaml").write_text(
        f"""
bus:
  url: {bus}
stores:
  traces: {store}
  workspace: file://{tmp_path / "ws"}
security:
  allow_private_targets: true
services:
  workspace:
    kind: workspace
    port: {port}
    settings:
      embedder: hashing
      poll_interval: 0.2
      webhook_schedule: [0.05, 0.1, 0.2]
"""
    )
    proc = _serve(tmp_path, "workspace")
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:

            async def ready() -> bool:
                if proc.poll() is not None:
                    pytest.fail((tmp_path / "workspace.log").read_text())
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within=30, what="the workspace service to be ready")
            made = await http.post(
                "/v1/webhooks", json={"url": server.url + "/hook", "events": ["file.created"]}
            )
            assert made.status_code == 201, made.text
            put = await http.put(
                "/v1/ws/default/files/notes/findings.md",
                content=b"# Findings\n",
                headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )
            assert put.status_code == 201, put.text
            # The same over MCP, in a trace of its own, named in params._meta.
            meta = {"traceparent": f"00-{MCP_TRACE}-{CALLER_SPAN}-01"}
            async with Client(f"{base}/mcp") as client:
                wrote = await client.call_tool(
                    "write", {"path": "notes/mcp.md", "content": "hi"}, meta=meta
                )
            assert not wrote.is_error
            await eventually(lambda: _got(receiver, 2), what="the webhook deliveries")
        subscriber = {"store": store, "bus": bus, "role": "consume", "service": "subscriber"}
        await asyncio.to_thread(
            _run, {**subscriber, "pattern": "file.created", "group": "readers", "handled": 2}
        )
    finally:
        proc.send_signal(signal.SIGTERM)  # the runtime flushes its spans on the way out
        await asyncio.to_thread(proc.wait, 30)
        await server.stop()
    assert {r["traceparent"].split("-")[1] for r in receiver.requests} == {CALLER_TRACE, MCP_TRACE}

    spans = _spans(store, CALLER_TRACE)
    (write,) = [s for s in spans if s.name.startswith("PUT ")]
    assert (write.service, write.parent_id) == ("workspace", CALLER_SPAN)
    publish = _one(spans, "publish file.created")
    assert (publish.service, publish.kind, publish.parent_id) == (
        "workspace",
        "PRODUCER",
        write.span_id,
    )
    process = _one(spans, "process file.created")
    assert (process.service, process.parent_id) == ("subscriber", publish.span_id)
    assert _one(spans, "execute_tool handle").parent_id == process.span_id
    delivery = _one(spans, "POST")
    assert (delivery.service, delivery.kind, delivery.parent_id) == (
        "workspace",
        "CLIENT",
        write.span_id,
    )
    assert delivery.attributes["http.response.status_code"] == 204
    assert delivery.attributes["microhive.webhook.attempt"] == 1
    assert delivery.span_id in {r["traceparent"].split("-")[2] for r in receiver.requests}

    # Over MCP: the tools/call span (parent from _meta, no HTTP span) leads to the same.
    spans = _spans(store, MCP_TRACE)
    call = _one(spans, "tools/call write")
    assert (call.service, call.kind, call.parent_id) == ("workspace", "SERVER", CALLER_SPAN)
    assert _one(spans, "publish file.created").parent_id == call.span_id
    assert _one(spans, "process file.created").service == "subscriber"
    assert _one(spans, "POST").parent_id == call.span_id
    assert not [s for s in spans if s.name.startswith("POST /mcp")]


async def _got(receiver: _Receiver, count: int = 1) -> bool:
    return len(receiver.requests) >= count


# ------------------------------------------------- the services that subscribe


@pytest.mark.parametrize("name", ["sentiment", "researcher", "orchestrator"])
async def test_subscribing_services_expose_their_backlog(tmp_path: Path, name: str) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"replies": ["done"]}))
    mesh = parse_config(
        f"""
bus:
  url: embedded://{tmp_path / "bus"}
stores:
  workflow: sqlite:///{tmp_path / "wf.db"}
models:
  work:
    provider: scripted
    model: {tmp_path / "model.json"}
roles:
  planner: {{model: work}}
  researcher: {{model: work}}
services:
  sentiment: {{kind: hive-sentiment}}
  researcher: {{kind: worker, settings: {{role: researcher}}}}
  orchestrator: {{kind: orchestrator}}
"""
    )
    ctx = ServiceContext.from_mesh(mesh, name)
    ctx = replace(ctx, state_dir=tmp_path / ".microhive")
    service = resolve_factory(mesh.service(name), name)(ctx)
    assert isinstance(service, Service)
    async with service.running():
        transport = httpx.ASGITransport(app=service.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:

            async def exposed() -> bool:
                text = (await http.get("/metrics")).text
                return "microhive_bus_handlers_in_flight{" in text and (
                    "microhive_bus_pending_messages{" in text
                )

            await eventually(exposed, what=f"{name}'s bus metrics")
