"""Server spans: one per request, child of the caller's traceparent, errors recorded."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.requests import Request

from microhive.context import CallContext
from microhive.errors import NotFound
from microhive.service import Service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def service(exporter: InMemorySpanExporter) -> Iterator[Service]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = Service(name="traced", tracer_provider=provider)

    @service.route("/items/{item}")
    async def item(request: Request) -> dict[str, str | None]:
        # Onward calls carry our server span as their parent.
        return {"traceparent": CallContext.current().next_hop().traceparent}

    @service.route("/missing")
    async def missing(request: Request) -> None:
        raise NotFound("gone")

    @service.route("/boom")
    async def boom(request: Request) -> None:
        raise RuntimeError("kaput")

    yield service
    provider.shutdown()


async def test_a_request_is_a_server_span_child_of_the_caller(
    service: Service, exporter: InMemorySpanExporter
) -> None:
    transport = httpx.ASGITransport(app=service.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        r = await client.get("/items/42", headers={"traceparent": TRACEPARENT})
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{item}"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/items/{item}"
    assert span.attributes["http.response.status_code"] == 200
    own_span = format(span.context.span_id, "016x")
    assert r.json() == {"traceparent": f"00-{TRACE_ID}-{own_span}-01"}


async def test_errors_are_recorded_on_the_span(
    service: Service, exporter: InMemorySpanExporter
) -> None:
    transport = httpx.ASGITransport(app=service.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        assert (await client.get("/missing")).status_code == 404
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/missing", headers={"microhive-hops": "0"})).status_code == 508
    missing, boom, looped = exporter.get_finished_spans()
    assert missing.attributes is not None
    assert missing.attributes["microhive.error"] == "not_found"
    assert missing.status.status_code is not StatusCode.ERROR, "a 404 is not a server fault"
    assert boom.status.status_code is StatusCode.ERROR
    assert [event.name for event in boom.events] == ["exception"]
    assert looped.attributes is not None
    assert looped.attributes["microhive.error"] == "hop_limit"
    assert looped.parent is None, "no incoming trace: the span starts one"
