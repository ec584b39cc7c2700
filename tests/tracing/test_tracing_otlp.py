"""OTLP/HTTP export: a local receiver decodes the protobuf requests and gets the same spans."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from microhive.tracing import (
    TraceStore,
    TracingSettings,
    agent_span,
    otlp_endpoint,
    setup_tracing,
    tool_span,
)


class Receiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP collector: remembers (trace id, span id, name, service) per span."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, str, str, str]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.headers["Content-Type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            self.server.paths.append(self.path)
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.server.spans.append(
                            (span.trace_id.hex(), span.span_id.hex(), span.name, service)
                        )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("how", ["setting", "env"])
def test_otlp_receiver_gets_the_same_spans_as_the_store(
    receiver: Receiver, store_url: str, how: str
) -> None:
    if how == "setting":
        settings = TracingSettings(store_url=store_url, otlp_endpoint=receiver.url)
        env: dict[str, str] = {}
    else:
        settings = TracingSettings(store_url=store_url)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url + "/"}
    with setup_tracing("gateway", 0, settings, env=env) as handle:
        assert handle.otlp_url == receiver.url + "/v1/traces"
        with agent_span("writer", provider=handle.provider):
            for i in range(3):
                with tool_span(f"t{i}", f"c{i}", provider=handle.provider):
                    pass
    with TraceStore(store_url) as store:
        stored = {
            (s.trace_id, s.span_id, s.name, s.service)
            for t in store.traces()
            for s in store.spans(t.trace_id)
        }
    assert len(stored) == 4
    assert set(receiver.spans) == stored
    assert set(receiver.paths) == {"/v1/traces"}


def test_otlp_endpoint_resolution() -> None:
    assert otlp_endpoint(None, {}) is None
    assert otlp_endpoint("http://c:4318", {}) == "http://c:4318/v1/traces"
    assert otlp_endpoint("http://c:4318/v1/traces", {}) == "http://c:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318"}
    assert otlp_endpoint(None, env) == "http://base:4318/v1/traces"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://signal:4318/custom"
    assert otlp_endpoint(None, env) == "http://signal:4318/custom"
    assert otlp_endpoint("http://mesh:4318", env) == "http://mesh:4318/v1/traces"
