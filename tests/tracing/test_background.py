"""Background traces: marked where they start, hidden from the list, shown with --all.

Unit level: ``background()`` makes a span a new, marked root, and the store tells
those traces apart when it reads. Through the real code path: a gateway (a real
``microhive serve`` process) polls a real tool service, and its polling traces are
marked -- while a tool call made through it is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client
from opentelemetry import trace
from tests.conftest import ServedMesh, wait_for

from microhive.errors import NotFound
from microhive.tracing import (
    BACKGROUND_ATTRIBUTE,
    TraceStore,
    TracingSettings,
    agent_span,
    background,
    in_background,
    setup_tracing,
    tool_span,
)


def test_background_starts_a_new_marked_trace_and_only_its_root_is_marked(
    store_url: str,
) -> None:
    with setup_tracing("gateway", 0, TracingSettings(store_url=store_url)) as handle:
        p = handle.provider
        with agent_span("planner", run_id="run-1", provider=p) as request:
            assert not in_background()
            with background():
                assert in_background()
                with tool_span("poll", provider=p) as poll, tool_span("poll.step", provider=p):
                    pass
            with tool_span("request.step", provider=p) as step:
                pass
        request_trace = request.trace_id
    assert poll.trace_id != request_trace  # background work never joins a request's trace
    assert step.trace_id == request_trace  # and the block left the request's context as it was
    assert poll.span.attributes[BACKGROUND_ATTRIBUTE] is True  # type: ignore[attr-defined]
    assert poll.span.attributes["gen_ai.tool.name"] == "poll"  # type: ignore[attr-defined]
    assert BACKGROUND_ATTRIBUTE not in request.span.attributes  # type: ignore[attr-defined]

    with TraceStore(store_url) as store:
        spans = {s.name: s for s in store.spans(poll.trace_id)}
        assert BACKGROUND_ATTRIBUTE not in spans["execute_tool poll.step"].attributes
        everything = store.traces()
        assert {(t.trace_id, t.background) for t in everything} == {
            (poll.trace_id, True),
            (request_trace, False),
        }
        assert store.summary(poll.trace_id).to_dict()["background"] is True
        assert store.summary(request_trace).to_dict()["background"] is False


def test_the_list_and_last_skip_background_traces_and_limit_counts_the_others(
    store_url: str,
) -> None:
    with setup_tracing("gateway", 0, TracingSettings(store_url=store_url)) as handle:
        p = handle.provider
        with agent_span("planner", run_id="run-1", provider=p) as run:
            pass
        handle.flush()  # the run is stored (and keyed) first, then the polls
        polls = []
        for _ in range(5):
            with background(), tool_span("tools/list", provider=p) as poll:
                polls.append(poll.trace_id)
    with TraceStore(store_url) as store:
        assert store.last() in polls
        assert store.last(background=False) == run.trace_id
        (only,) = store.traces(limit=1, background=False)
        assert (only.trace_id, only.background, only.run_id) == (run.trace_id, False, "run-1")
        assert len(store.traces(limit=20)) == 6
        assert {t.trace_id for t in store.traces(limit=5)} == set(polls)


def test_last_without_background_says_so_when_there_is_nothing_else(store_url: str) -> None:
    handle = setup_tracing("gateway", 0, TracingSettings(store_url=store_url))
    with handle, background(), tool_span("tools/list", provider=handle.provider):
        pass
    with TraceStore(store_url) as store:
        assert store.traces(background=False) == []
        with pytest.raises(NotFound, match="no traces yet other than background ones"):
            store.last(background=False)


def test_tracing_off_records_nothing_in_the_background(store_url: str) -> None:
    settings = TracingSettings(store_url=store_url, enabled=False)
    handle = setup_tracing("gateway", 0, settings)
    with handle, background(), tool_span("tools/list", provider=handle.provider) as poll:
        assert not poll.span.is_recording()
    assert trace.get_current_span() is trace.INVALID_SPAN


# ------------------------------------------------------------- the real path

TOOLS = '''
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b
'''


class _Mesh(ServedMesh):
    """A tool service and a gateway polling it, each a ``microhive serve`` process."""

    def __init__(self, root: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROHIVE")}
        super().__init__(root, ("calc", "gateway"), env)
        (root / "bg_tools.py").write_text(TOOLS)
        (root / "microhive.yaml").write_text(
            f"""
name: background
services:
  calc:
    kind: tool
    port: {self.ports["calc"]}
    settings: {{tools: "bg_tools:add"}}
  gateway:
    kind: gateway
    port: {self.ports["gateway"]}
    depends_on: [calc]
    settings: {{health_interval: 0.5, refresh_ttl: 1, embedder: none}}
"""
        )

    def trace_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "microhive", "trace", *args],
            cwd=self.root,
            env={**self.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[_Mesh]:
    m = _Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop_all()


@pytest.mark.slow
async def test_a_gateway_polling_its_tool_service_writes_background_traces(mesh: _Mesh) -> None:
    mesh.start("calc")
    mesh.start("gateway")
    async with Client(f"{mesh.url('gateway')}/mcp") as client:
        answer = await client.call_tool("calc_add", {"a": 2, "b": 3})
    assert not answer.is_error

    store = TraceStore(f"sqlite:///{mesh.root}/.microhive/traces.db")

    def polled_and_called() -> bool:
        try:
            listed = store.traces(limit=200)
        except NotFound:  # no batch exported yet: the file is not there
            return False
        polls = [t for t in listed if t.background and t.root_service == "gateway"]
        asked = [t for t in listed if not t.background]
        return (
            len(polls) >= 3
            # answered by the tool service in the same trace
            and any(t.service_count == 2 for t in polls)
            and any("calc_add" in t.root_name for t in asked)
            # and polled again after everything the test asked
            and max(t.start_ns for t in polls) > max(t.start_ns for t in asked)
        )

    with store:
        wait_for(polled_and_called, timeout=60, what="polling traces and the call's trace")
    mesh.stop_all()  # every span flushed; the list no longer changes under the CLI

    listed = json.loads(mesh.trace_cli("--json", "-n", "500").stdout)
    assert listed and all(t["background"] is False for t in listed)
    assert any("calc_add" in t["root"] for t in listed)
    everything = json.loads(mesh.trace_cli("--json", "--all", "-n", "500").stdout)
    assert {t["trace_id"] for t in listed} < {t["trace_id"] for t in everything}
    background_roots = {(t["root_service"], t["root"]) for t in everything if t["background"]}
    assert ("gateway", "MCP send tools/list") in background_roots

    table = mesh.trace_cli("-n", "500")
    assert table.returncode == 0, table.stderr
    # the gateway's own listings are hidden; what a caller asked it (the test's client
    # connecting, listing and calling) is not background work
    assert "MCP send tools/list" not in table.stdout and "calc_add" in table.stdout
    assert "background traces hidden" in table.stdout
    shown = mesh.trace_cli("--all", "-n", "500")
    assert "MCP send tools/list (background)" in shown.stdout

    # --last: the newest trace that is not background (the polls went on after the call)
    last = json.loads(mesh.trace_cli("--last", "--json").stdout)
    assert last["background"] is False
    assert last["trace_id"] == max(listed, key=lambda t: t["start_ns"])["trace_id"]
    newest = json.loads(mesh.trace_cli("--last", "--all", "--json").stdout)
    assert newest["background"] is True
