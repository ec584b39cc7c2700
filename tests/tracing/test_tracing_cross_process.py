"""Spans from separate real processes land in one store file as one trace."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from microhive.context import CallContext
from microhive.tracing import (
    TraceStore,
    TracingSettings,
    agent_span,
    client_span,
    process_span,
    setup_tracing,
    tool_span,
)


def test_two_processes_one_trace_with_intact_links(
    store_url: str, run_child: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    with setup_tracing("orchestrator", 0, TracingSettings(store_url=store_url)) as handle:
        p = handle.provider
        with agent_span("orchestrator", run_id="run-42", provider=p) as root:
            outgoing: dict[str, str] = {}
            with client_span(
                "POST", "http://127.0.0.1:9/mcp?token=x", headers=outgoing, provider=p
            ):
                ctx = CallContext.new(max_hops=8, timeout=60).next_hop()
                headers = {**ctx.to_headers(), **outgoing}
                child = run_child(
                    {"store": store_url, "headers": headers, "service": "worker", "mode": "chain"}
                )
        published = child["published_headers"]
        server_id, publish_id = child["span_ids"]
        # The event is consumed here, in the first process, and redelivered once.
        for attempt in (1, 2):
            with process_span(
                "embedded", "file.created", published, delivery_attempt=attempt, provider=p
            ):
                pass
        trace_id = root.trace_id

    with TraceStore(store_url) as store:
        [summary] = store.traces()
        spans = {s.span_id: s for s in store.spans(trace_id)}
    assert summary.trace_id == trace_id
    assert summary.run_id == "run-42"
    assert summary.service_count == 2
    assert summary.root_name == "invoke_agent orchestrator"
    assert summary.span_count == len(spans) == 8

    roots = [s for s in spans.values() if s.parent_id is None]
    assert [r.name for r in roots] == ["invoke_agent orchestrator"]
    assert all(s.parent_id in spans for s in spans.values() if s.parent_id is not None)

    by_name = {s.name: s for s in spans.values()}
    client = by_name["POST"]
    assert client.attributes["url.full"] == "http://127.0.0.1:9/mcp"  # no query on spans
    server = spans[server_id]
    assert (server.name, server.kind, server.service) == ("POST /mcp", "SERVER", "worker")
    assert server.parent_id == client.span_id  # across the process boundary
    assert server.attributes["microhive.hops"] == 7
    assert server.attributes["microhive.max_hops"] == 8
    assert "microhive.deadline" in server.attributes

    tool = by_name["execute_tool workspace.write"]
    chat = by_name["chat offline"]
    assert tool.parent_id == server.span_id and chat.parent_id == tool.span_id
    assert chat.attributes["gen_ai.provider.name"] == "offline"
    assert chat.attributes["gen_ai.usage.output_tokens"] == 34

    publish = spans[publish_id]
    assert (publish.name, publish.kind) == ("publish file.created", "PRODUCER")
    assert publish.attributes["microhive.hops"] == 6  # the event leaves with one hop fewer
    consumers = [s for s in spans.values() if s.kind == "CONSUMER"]
    assert len(consumers) == 2  # the redelivery stays in the trace
    for consumer in consumers:
        assert consumer.service == "orchestrator"
        assert consumer.parent_id == publish_id
        assert [link["span_id"] for link in consumer.links] == [publish_id]
    assert sorted(c.attributes["microhive.delivery_attempt"] for c in consumers) == [1, 2]

    # Content was not opted in: the secret is nowhere in the store.
    assert "gen_ai.tool.call.arguments" not in tool.attributes
    assert "gen_ai.input.messages" not in chat.attributes
    for span in spans.values():
        assert "TOP-SECRET" not in json.dumps(span.to_dict())


def test_concurrent_processes_share_one_store(
    store_url: str, start_child: Callable[[dict[str, Any]], Any]
) -> None:
    children = [
        start_child({"store": store_url, "service": f"w{i}", "mode": "bulk", "count": 300})
        for i in range(3)
    ]
    with setup_tracing("parent", 0, TracingSettings(store_url=store_url)) as handle:
        for i in range(300):
            with tool_span(f"local-{i}", provider=handle.provider):
                pass
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert len(json.loads(out)["span_ids"]) == 300
    with TraceStore(store_url) as store:
        assert store.count_spans() == 1200
        services = {t.root_service for t in store.traces(limit=2000)}
    assert services == {"parent", "w0", "w1", "w2"}
