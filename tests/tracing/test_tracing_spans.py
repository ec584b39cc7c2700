"""Span helpers: names, kinds, semantic-convention attributes, content opt-in, stop events."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from microhive.context import CallContext
from microhive.errors import DeadlineExceeded, HopLimitExceeded, UpstreamError
from microhive.tracing import (
    TraceStore,
    TracingHandle,
    TracingSettings,
    agent_span,
    breaker_opened,
    chat_span,
    current_ids,
    deadline_exceeded,
    loop_stopped,
    publish_span,
    setup_tracing,
    tool_span,
)


def _handle(store_url: str, capture: bool = False) -> tuple[TracingHandle, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    settings = TracingSettings(store_url=store_url, capture_content=capture)
    handle = setup_tracing("gateway", 2, settings, processors=[SimpleSpanProcessor(memory)])
    return handle, memory


def test_genai_names_kinds_and_attributes(store_url: str) -> None:
    handle, memory = _handle(store_url)
    p = handle.provider
    with handle, agent_span("researcher", agent_id="r-1", run_id="run-1", provider=p):
        with chat_span("openai", "gpt-4o-mini", temperature=0.2, provider=p) as chat:
            chat.usage(input_tokens=10, output_tokens=5)
            chat.response(model="gpt-4o-mini-2024", finish_reasons=["stop"])
        with tool_span("web.fetch", "call-7", description="fetch a page", provider=p) as t:
            t.tool_result({"status": 200})
    spans = {s.name: s for s in memory.get_finished_spans()}
    agent = spans["invoke_agent researcher"]
    assert agent.kind is SpanKind.INTERNAL
    assert agent.attributes is not None
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "researcher"
    assert agent.attributes["microhive.run_id"] == "run-1"
    chat_attrs = spans["chat gpt-4o-mini"].attributes
    assert spans["chat gpt-4o-mini"].kind is SpanKind.CLIENT
    assert chat_attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.model": "gpt-4o-mini-2024",
        "gen_ai.response.finish_reasons": ("stop",),
    }
    tool_attrs = spans["execute_tool web.fetch"].attributes
    assert tool_attrs is not None
    assert tool_attrs["gen_ai.tool.name"] == "web.fetch"
    assert tool_attrs["gen_ai.tool.call.id"] == "call-7"
    assert "gen_ai.tool.call.result" not in tool_attrs
    resource = spans["execute_tool web.fetch"].resource.attributes
    assert resource["service.name"] == "gateway"
    assert resource["service.instance.id"] == "gateway-2"


def test_content_is_recorded_only_when_opted_in(store_url: str, tmp_path: object) -> None:
    for capture in (False, True):
        url = store_url.replace("traces.db", f"traces-{capture}.db")
        handle, _ = _handle(url, capture=capture)
        with handle:
            p = handle.provider
            with tool_span("calc.add", "c1", arguments={"a": "SECRET-ARG"}, provider=p) as tool:
                tool.tool_result("SECRET-RESULT")
            with chat_span(
                "offline",
                "offline",
                input_messages=[{"role": "user", "content": "SECRET-PROMPT"}],
                system_instructions="SECRET-SYSTEM",
                provider=p,
            ) as chat:
                chat.output_messages([{"role": "assistant", "content": "SECRET-OUTPUT"}])
        with TraceStore(url) as store:
            stored = [s for t in store.traces() for s in store.spans(t.trace_id)]
        dumped = json.dumps([s.to_dict() for s in stored])
        for secret in (
            "SECRET-ARG",
            "SECRET-RESULT",
            "SECRET-PROMPT",
            "SECRET-SYSTEM",
            "SECRET-OUTPUT",
        ):
            assert (secret in dumped) is capture, (secret, capture)
        if capture:
            tool_attrs = next(s for s in stored if s.name == "execute_tool calc.add").attributes
            assert json.loads(tool_attrs["gen_ai.tool.call.arguments"]) == {"a": "SECRET-ARG"}
            assert tool_attrs["gen_ai.tool.call.result"] == "SECRET-RESULT"


def test_stop_errors_become_events_with_error_status(store_url: str) -> None:
    handle, memory = _handle(store_url)
    p = handle.provider
    ctx = CallContext(hops=0, max_hops=4)
    with handle:
        with pytest.raises(HopLimitExceeded), tool_span("loop.call", ctx=ctx, provider=p):
            ctx.check()
        with pytest.raises(UpstreamError), tool_span("web.fetch", provider=p):
            raise UpstreamError("web answered 502")
        with tool_span("slow.tool", provider=p):
            deadline_exceeded(1_700_000_000.0, overdue=1.5)
        with agent_span("writer", provider=p) as span:
            breaker_opened("web", failures=5, reset_after=30, span=span)
        with publish_span("embedded", "a.b", provider=p):
            loop_stopped(0, 16, where="bus consumer")
    spans = {s.name: s for s in memory.get_finished_spans()}

    hop = spans["execute_tool loop.call"]
    assert hop.status.status_code is StatusCode.ERROR
    assert hop.status.description is not None and hop.status.description.startswith("loop_stopped:")
    assert [e.name for e in hop.events] == ["loop_stopped"]
    assert hop.attributes is not None and hop.attributes["error.type"] == HopLimitExceeded.code
    assert hop.attributes["microhive.hops"] == 0

    upstream = spans["execute_tool web.fetch"]
    assert upstream.status.status_code is StatusCode.ERROR
    assert (
        upstream.attributes is not None and upstream.attributes["error.type"] == UpstreamError.code
    )
    assert [e.name for e in upstream.events] == ["exception"]

    slow = spans["execute_tool slow.tool"]
    assert [e.name for e in slow.events] == ["deadline_exceeded"]
    assert slow.status.description == "deadline_exceeded: deadline passed 1.500s ago"

    breaker = spans["invoke_agent writer"]
    assert breaker.status.description == (
        "breaker_opened: circuit breaker for web opened after 5 failures; retrying in 30s"
    )
    assert spans["publish a.b"].status.description == (
        "loop_stopped: hop limit reached after 16 of 16 hops at bus consumer"
    )
    with pytest.raises(DeadlineExceeded):
        CallContext(deadline=1.0).check()


def test_current_ids_inside_and_outside_a_span(store_url: str) -> None:
    handle, _ = _handle(store_url)
    with handle:
        assert current_ids() is None
        with tool_span("x", provider=handle.provider) as span:
            ids = current_ids()
            assert ids is not None and ids[0] == span.trace_id


async def test_cancellation_and_http_status_are_recorded(store_url: str) -> None:
    import asyncio

    from microhive.tracing import server_span

    handle, memory = _handle(store_url)
    p = handle.provider
    with handle:
        entered = asyncio.Event()

        async def slow() -> None:
            with tool_span("slow", provider=p):
                entered.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(slow())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        headers = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
        with server_span("get", "/x", headers=headers, provider=p) as span:
            span.http_status(503)
        with server_span("get", "/y", provider=p) as span:
            span.http_status(404)
    spans = {s.name: s for s in memory.get_finished_spans()}
    cancelled = spans["execute_tool slow"]
    assert cancelled.status.description == "cancelled (CancelledError)"
    failed = spans["GET /x"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.context is not None and failed.parent is not None
    assert format(failed.context.trace_id, "032x") == "ab" * 16
    assert format(failed.parent.span_id, "016x") == "cd" * 8
    assert spans["GET /y"].status.status_code is StatusCode.UNSET  # a 4xx is the caller's


def test_mcp_spans_parent_through_meta_and_link_the_transport(store_url: str) -> None:
    from microhive.tracing import mcp_client_span, mcp_server_span, server_span

    handle, memory = _handle(store_url)
    p = handle.provider
    with handle:
        meta: dict[str, object] = {"io.microhive/hops": 3}
        with mcp_client_span(
            "tools/call", "web.fetch", meta=meta, request_id=7, arguments={"url": "x"}, provider=p
        ):
            pass
        assert isinstance(meta["traceparent"], str)
        with (
            server_span("POST", "/mcp", provider=p),
            mcp_server_span(
                "tools/call", "web.fetch", meta=meta, request_id=7, session_id="s1", provider=p
            ) as span,
        ):
            span.tool_error("page not found")
        with mcp_server_span("tools/list", provider=p):
            pass
    spans = {(s.name, s.kind): s for s in memory.get_finished_spans()}
    client = spans["tools/call web.fetch", SpanKind.CLIENT]
    server = spans["tools/call web.fetch", SpanKind.SERVER]
    http = spans["POST /mcp", SpanKind.SERVER]
    assert client.context is not None and server.parent is not None and http.context is not None
    assert server.parent.span_id == client.context.span_id  # parent from _meta, not transport
    assert [link.context.span_id for link in server.links] == [http.context.span_id]
    assert server.attributes is not None and client.attributes is not None
    assert server.attributes["mcp.method.name"] == "tools/call"
    assert server.attributes["gen_ai.operation.name"] == "execute_tool"
    assert server.attributes["gen_ai.tool.name"] == "web.fetch"
    assert server.attributes["jsonrpc.request.id"] == "7"
    assert server.attributes["mcp.session.id"] == "s1"
    assert server.attributes["error.type"] == "tool_error"
    assert server.status.description == "page not found"
    assert "gen_ai.tool.call.arguments" not in client.attributes  # content not opted in
    listing = spans["tools/list", SpanKind.SERVER]
    assert listing.attributes is not None and "gen_ai.operation.name" not in listing.attributes
