"""One run, one trace: real service processes write their spans to the mesh's trace store.

An orchestrator, a worker and a tool service run as ``python -m microhive serve``
processes (what the supervisor starts) with scripted models. ``POST /runs``
arrives with a caller's ``traceparent``; the trace store then holds one trace
from that request through planning, dispatch, the worker's agent, its model
calls and its tool call -- whose ``tools/call`` span in the tool service's
process is a child of the worker's, through ``params._meta``. Nothing the
models or tools saw is on a span unless the mesh opts in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.types import TextContent
from tests.conftest import ServedMesh, wait_for

from microhive.context import CallContext
from microhive.tracing import StoredSpan, TraceStore

pytestmark = pytest.mark.slow

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CONTENT_KEYS = (
    "gen_ai.input.messages",
    "gen_ai.system_instructions",
    "gen_ai.output.messages",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
)
TOOLS = '''
from opentelemetry import trace

from microhive.context import CallContext
from microhive.tracing import tool_span


def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


async def inside() -> dict:
    """What a tool sees of the trace it runs in, and a span of its own."""
    current = trace.get_current_span()
    with tool_span("inside.step") as step:
        step_id = format(step.span.get_span_context().span_id, "016x")
    return {
        "recording": current.is_recording(),
        "span_id": format(current.get_span_context().span_id, "016x"),
        "traceparent": CallContext.current().traceparent,
        "step_id": step_id,
    }
'''


class Mesh(ServedMesh):
    """A mesh folder and its service processes (SIGTERM on stop: spans are flushed)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        names = ("orchestrator", "researcher", "calc")
        super().__init__(root, names, {**os.environ, **(env or {})})
        plan = {"tasks": [{"id": "sum", "role": "researcher", "instruction": "add 2 and 3"}]}
        (root / "planner.json").write_text(json.dumps({"replies": [json.dumps(plan)]}))
        call = {"name": "add", "arguments": {"a": 2, "b": 3}}
        replies = [{"tool_calls": [call]}, "The sum is 5."]
        (root / "worker.json").write_text(json.dumps({"cycle": True, "replies": replies}))
        (root / "wiring_tools.py").write_text(TOOLS)
        # stores.traces is left at its default: .microhive/traces.db beside the mesh file.
        (root / "microhive.yaml").write_text(
            f"""
bus:
  url: embedded://{root}/bus
stores:
  workflow: sqlite:///{root}/wf.db
models:
  plan:
    provider: scripted
    model: {root}/planner.json
  work:
    provider: scripted
    model: {root}/worker.json
roles:
  planner:
    model: plan
  researcher:
    model: work
services:
  orchestrator:
    kind: orchestrator
    port: {self.ports["orchestrator"]}
  calc:
    kind: tool
    port: {self.ports["calc"]}
    settings:
      tools: "wiring_tools:add,inside"
  researcher:
    kind: worker
    port: {self.ports["researcher"]}
    settings:
      role: researcher
      gateway: calc
"""
        )

    @property
    def store(self) -> TraceStore:
        return TraceStore(f"sqlite:///{self.root}/.microhive/traces.db")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop_all()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _ancestors(span: StoredSpan, spans: dict[str, StoredSpan]) -> list[str]:
    names = []
    parent = span.parent_id
    while parent in spans:
        names.append(spans[parent].name)
        parent = spans[parent].parent_id
    return names


def test_a_run_is_one_trace_across_orchestrator_worker_and_tool_service(mesh: Mesh) -> None:
    for name in ("calc", "orchestrator", "researcher"):
        mesh.start(name)
    response = httpx.post(
        f"{mesh.url('orchestrator')}/runs",
        json={"goal": "add two numbers"},
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    assert response.json()["trace_id"] == TRACE_ID  # the run keeps the caller's trace

    def finished() -> dict[str, Any] | None:
        run = httpx.get(f"{mesh.url('orchestrator')}/runs/{run_id}", timeout=5).json()
        return run if run["status"] in ("succeeded", "failed") else None

    run = wait_for(finished, timeout=60, what="run finished")
    assert isinstance(run, dict) and run["status"] == "succeeded", run

    # /metrics: model calls in the orchestrator (planner) and the worker, tool calls in
    # the worker (client side) and in the tool service (server side).
    orch_metrics = httpx.get(f"{mesh.url('orchestrator')}/metrics", timeout=5).text
    worker_metrics = httpx.get(f"{mesh.url('researcher')}/metrics", timeout=5).text
    calc_metrics = httpx.get(f"{mesh.url('calc')}/metrics", timeout=5).text
    model_count = "microhive_model_call_duration_seconds_count"
    tool_count = "microhive_tool_call_duration_seconds_count"
    assert _metric(orch_metrics, model_count, provider="scripted", outcome="ok") == 1
    assert _metric(worker_metrics, model_count, provider="scripted", outcome="ok") == 2
    assert _metric(worker_metrics, tool_count, tool="add", outcome="ok") == 1
    assert _metric(calc_metrics, tool_count, tool="add", outcome="ok") == 1
    assert "microhive_worker_tasks_in_flight 0.0" in worker_metrics

    mesh.stop_all()  # SIGTERM: every process flushes its spans to the store

    with mesh.store as store:
        assert store.find(run_id) == TRACE_ID
        spans = {s.span_id: s for s in store.spans(TRACE_ID)}
        # Besides the run: the test's own polls (no traceparent: each starts a trace) and
        # the worker connecting to the tool service at start-up -- no trace per tool call.
        others = [t for t in store.traces() if t.trace_id != TRACE_ID]
    assert {(t.root_name, t.root_service) for t in others} <= {
        ("GET /runs/{run_id}", "orchestrator"),
        ("MCP send server/discover", "researcher"),
    }
    by_name: dict[str, list[StoredSpan]] = {}
    for s in spans.values():
        by_name.setdefault(s.name, []).append(s)

    # One root: the POST /runs server span, a child of the caller's span.
    outside = [s for s in spans.values() if s.parent_id not in spans]
    assert [(s.name, s.parent_id) for s in outside] == [("POST /runs", CALLER_SPAN)]
    (post,) = by_name["POST /runs"]
    assert (post.kind, post.service) == ("SERVER", "orchestrator")
    assert post.attributes["microhive.run_id"] == run_id
    assert post.attributes["http.response.status_code"] == 202
    assert {s.service for s in spans.values()} == {"orchestrator", "researcher", "calc"}

    (planner,) = by_name["invoke_agent planner"]
    assert planner.parent_id == post.span_id
    assert planner.attributes["microhive.run_id"] == run_id
    (plan_chat,) = by_name["chat planner"]
    assert plan_chat.parent_id == planner.span_id
    assert plan_chat.attributes["gen_ai.usage.output_tokens"] > 0

    (dispatch,) = by_name["dispatch researcher"]
    assert dispatch.parent_id == post.span_id
    assert dispatch.attributes["microhive.task_id"] == "sum"

    (agent,) = by_name["invoke_agent researcher"]
    assert agent.service == "researcher"
    assert "dispatch researcher" in _ancestors(agent, spans)  # across the bus
    assert agent.attributes["microhive.run_id"] == run_id
    assert agent.attributes["gen_ai.usage.output_tokens"] > 0
    chats = by_name["chat worker"]
    assert len(chats) == 2 and all(c.parent_id == agent.span_id for c in chats)
    assert {(c.kind, c.attributes["gen_ai.provider.name"]) for c in chats} == {
        ("CLIENT", "scripted")
    }

    (tool,) = by_name["execute_tool add"]
    assert tool.parent_id == agent.span_id
    assert tool.attributes["gen_ai.tool.call.id"] == "call_0"
    # The MCP SDK's client span carries the call; the tool service's span is its child.
    (client,) = by_name["MCP send tools/call add"]
    assert (client.kind, client.service, client.parent_id) == ("CLIENT", "researcher", tool.span_id)
    (server,) = by_name["tools/call add"]
    assert (server.kind, server.service, server.parent_id) == ("SERVER", "calc", client.span_id)
    assert server.attributes["gen_ai.tool.name"] == "add"
    assert server.attributes["microhive.hops"] < agent.attributes["microhive.hops"]

    assert all(s.status != "ERROR" for s in spans.values())
    for s in spans.values():
        leaked = [k for k in CONTENT_KEYS if k in s.attributes]
        assert not leaked, f"{s.name} records content without opt-in: {leaked}"

    shown = subprocess.run(
        [sys.executable, "-m", "microhive", "trace", run_id, "--json", "-f", "microhive.yaml"],
        cwd=mesh.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)
    assert listed["trace_id"] == TRACE_ID and listed["run_id"] == run_id
    assert len(listed["spans"]) == len(spans)


async def test_tool_service_span_is_the_callers_child_and_content_is_opt_in(
    tmp_path: Path,
) -> None:
    mesh = Mesh(tmp_path, env={"MICROHIVE__TRACING__CAPTURE_CONTENT": "true"})
    try:
        mesh.start("calc")
        caller = CallContext.new(max_hops=6).next_hop()
        meta = {**caller.to_meta(), "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
        async with Client(f"{mesh.url('calc')}/mcp") as client:
            ok = await client.call_tool("add", {"a": 20, "b": 22}, meta=meta)
            stopped = await client.call_tool(
                "add", {"a": 1, "b": 1}, meta={**meta, "io.microhive/hops": 0}
            )
        assert not ok.is_error and ok.structured_content == {"result": 42}
        assert stopped.is_error
    finally:
        mesh.stop_all()

    with mesh.store as store:
        spans = store.spans(TRACE_ID)
        assert len(store.traces()) == 1, "no HTTP span of its own without a traceparent header"
    done, refused = sorted(spans, key=lambda s: s.start_ns)
    for s in (done, refused):
        assert (s.name, s.kind, s.service) == ("tools/call add", "SERVER", "calc")
        assert s.parent_id == CALLER_SPAN  # from params._meta
    assert json.loads(done.attributes["gen_ai.tool.call.arguments"]) == {"a": 20, "b": 22}
    assert "42" in done.attributes["gen_ai.tool.call.result"]
    assert done.attributes["microhive.hops"] == 5
    assert refused.status == "ERROR"
    assert [e["name"] for e in refused.events] == ["loop_stopped"]


async def test_a_tool_runs_inside_the_live_server_span(tmp_path: Path) -> None:
    """The tool's current span is the service's own ``tools/call`` span, not a parsed copy."""
    mesh = Mesh(tmp_path)
    try:
        mesh.start("calc")
        caller = CallContext.new(max_hops=6).next_hop()
        meta = {**caller.to_meta(), "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
        async with Client(f"{mesh.url('calc')}/mcp") as client:
            result = await client.call_tool("inside", {}, meta=meta)
    finally:
        mesh.stop_all()
    assert not result.is_error, result
    (text,) = result.content
    assert isinstance(text, TextContent)
    seen = json.loads(text.text)

    with mesh.store as store:
        spans = {s.span_id: s for s in store.spans(TRACE_ID)}
    (server,) = [s for s in spans.values() if s.name == "tools/call inside"]
    assert seen["recording"] is True
    assert seen["span_id"] == server.span_id
    assert seen["traceparent"].split("-")[1:3] == [TRACE_ID, server.span_id]
    assert spans[seen["step_id"]].parent_id == server.span_id


async def test_protocol_paths_get_an_http_span_only_with_a_traceparent() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode
    from starlette.requests import Request

    from microhive.service import Service

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = Service(name="proto", tracer_provider=provider)

    @service.route("/mcp", methods=["POST"])
    async def mcp(request: Request) -> dict[str, str | None]:
        return {"traceparent": CallContext.current().traceparent}

    @service.route("/rest", methods=["POST"])
    async def rest(request: Request) -> dict[str, str | None]:
        return {"traceparent": CallContext.current().traceparent}

    service.add_protocol_path("/mcp")
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    transport = httpx.ASGITransport(app=service.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        assert (await client.post("/mcp")).json() == {"traceparent": None}
        assert (await client.post("/rest")).status_code == 200
        joined = await client.post(
            "/mcp", headers={"traceparent": traceparent, "microhive-hops": "7"}
        )
        looped = await client.post("/rest", headers={"microhive-hops": "0"})
    assert looped.status_code == 508
    rest_span, mcp_span, stopped = exporter.get_finished_spans()
    provider.shutdown()
    assert rest_span.name == "POST /rest" and rest_span.parent is None
    assert mcp_span.name == "POST /mcp" and mcp_span.parent is not None
    assert format(mcp_span.parent.span_id, "016x") == CALLER_SPAN
    assert joined.json()["traceparent"].split("-")[2] == format(mcp_span.context.span_id, "016x")
    assert mcp_span.attributes is not None and mcp_span.attributes["microhive.hops"] == 7
    # A request out of hops is a stop: its event, ERROR status and the error code.
    assert stopped.status.status_code is StatusCode.ERROR
    assert [e.name for e in stopped.events] == ["loop_stopped"]
    assert stopped.attributes is not None and stopped.attributes["error.type"] == "hop_limit"
