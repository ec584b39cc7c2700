"""The trace store's read side: listing, lookup by run id / prefix / last, retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, Status, StatusCode

from microhive.config.model import MeshConfig
from microhive.errors import ConfigError, InvalidInput, NotFound
from microhive.tracing import (
    SqliteSpanExporter,
    TraceStore,
    TracingHandle,
    TracingSettings,
    set_run_id,
    setup_tracing,
    store_path,
)

HOUR_NS = 3600 * 10**9


def _trace(
    handle: TracingHandle,
    name: str,
    start_ns: int,
    *,
    children: int = 1,
    run_id: str | None = None,
    fail: bool = False,
) -> str:
    """One root span with ``children`` child spans at a chosen time; returns its trace id."""
    tracer = handle.tracer()
    root = tracer.start_span(name, start_time=start_ns)
    if run_id:
        set_run_id(run_id, span=root)
    from opentelemetry import trace

    ctx = trace.set_span_in_context(root)
    for i in range(children):
        child = tracer.start_span(
            f"{name}.child{i}", context=ctx, start_time=start_ns + 1000 * (i + 1)
        )
        if fail and i == 0:
            child.set_status(Status(StatusCode.ERROR, "boom"))
        child.end(end_time=start_ns + 1000 * (i + 1) + 500)
    root.end(end_time=start_ns + 10**6 * (children + 1))
    return format(root.get_span_context().trace_id, "032x")


def test_list_find_last_and_summaries(store_url: str) -> None:
    now = time.time_ns()
    with setup_tracing("orch", 0, TracingSettings(store_url=store_url)) as handle:
        old = _trace(handle, "old", now - 3 * HOUR_NS, run_id="run-old")
        mid = _trace(handle, "mid", now - 2 * HOUR_NS, children=3, fail=True)
        new = _trace(handle, "new", now - HOUR_NS, run_id="run-new")
    with TraceStore(store_url) as store:
        listed = store.traces()
        assert [t.trace_id for t in listed] == [new, mid, old]
        assert [t.root_name for t in listed] == ["new", "mid", "old"]
        assert [t.error for t in listed] == [False, True, False]
        assert listed[1].span_count == 4 and listed[1].service_count == 1
        assert listed[1].duration_ms == pytest.approx(4.0)
        assert store.last() == new
        assert store.find("run-old") == old
        assert store.find(mid[:10]) == mid
        assert store.find(mid.upper()) == mid
        with pytest.raises(NotFound, match="no trace with run id or trace id 'nope'"):
            store.find("nope")
        with pytest.raises(NotFound):
            store.find(mid[:3])  # too short to be a prefix
        with pytest.raises(InvalidInput):
            store.find("  ")
        with pytest.raises(NotFound):
            store.summary("0" * 32)
        assert [s.name for s in store.spans(mid)] == [
            "mid",
            "mid.child0",
            "mid.child1",
            "mid.child2",
        ]


def test_ambiguous_prefix_is_reported(tmp_path: Path) -> None:
    exporter = SqliteSpanExporter(tmp_path / "t.db")
    spans = []
    for n in (1, 2):
        ctx = SpanContext(trace_id=(0xABCD << 112) + n, span_id=n, is_remote=False)
        spans.append(ReadableSpan(f"t{n}", context=ctx, start_time=n, end_time=n + 1))
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    with TraceStore(f"sqlite:///{tmp_path / 't.db'}") as store:
        with pytest.raises(InvalidInput, match="ambiguous"):
            store.find("abcd")
        assert store.find("abcd" + "0" * 27 + "2") == "abcd" + "0" * 27 + "2"
        assert store.traces()[0].root_service.startswith("unknown")  # no service name


def test_retention_drops_whole_traces_oldest_first(store_url: str) -> None:
    now = time.time_ns()
    unlimited = TracingSettings(store_url=store_url, max_spans=None, max_age_hours=None)
    with setup_tracing("orch", 0, unlimited) as handle:
        ancient = _trace(handle, "ancient", now - 500 * HOUR_NS, children=2)
        older = _trace(handle, "older", now - 3 * HOUR_NS, children=2)
        newer = _trace(handle, "newer", now - 2 * HOUR_NS, children=2)
        newest = _trace(handle, "newest", now - HOUR_NS, children=2)
    with TraceStore(store_url) as store:
        assert store.count_spans() == 12
        assert store.prune(max_age_hours=168) == 3
        assert {t.trace_id for t in store.traces()} == {older, newer, newest}
        assert store.prune(max_spans=7) == 3  # keeps 2 whole traces (6 spans), not 7 spans
        assert [t.trace_id for t in store.traces()] == [newest, newer]
        assert store.count_spans() == 6
        assert ancient not in {t.trace_id for t in store.traces()}


def test_exporter_applies_retention(tmp_path: Path) -> None:
    exporter = SqliteSpanExporter(tmp_path / "t.db", max_spans=2, max_age_hours=1)
    now = time.time_ns()
    spans = [
        ReadableSpan(
            f"s{n}",
            context=SpanContext(trace_id=n, span_id=n, is_remote=False),
            start_time=start,
            end_time=start + 10,
        )
        for n, start in ((1, now - 2 * HOUR_NS), (2, now - 3), (3, now - 2), (4, now - 1))
    ]
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE  # closed
    with TraceStore(f"sqlite:///{tmp_path / 't.db'}") as store:
        assert [t.root_name for t in store.traces()] == ["s4", "s3"]


def test_store_urls_and_missing_store(tmp_path: Path) -> None:
    assert store_path("sqlite:///.microhive/traces.db") == Path(".microhive/traces.db")
    assert (
        store_path("sqlite:///.microhive/traces.db", tmp_path) == tmp_path / ".microhive/traces.db"
    )
    assert store_path("sqlite:////var/t.db", tmp_path) == Path("/var/t.db")
    for bad in ("postgres://x/y", "sqlite://host/x.db", "sqlite:///", "traces.db"):
        with pytest.raises(ConfigError):
            store_path(bad)
    with (
        TraceStore(f"sqlite:///{tmp_path / 'none.db'}") as store,
        pytest.raises(NotFound, match="no trace store"),
    ):
        store.traces()
    assert not (tmp_path / "none.db").exists()


def test_settings_come_from_the_mesh(tmp_path: Path) -> None:
    mesh = MeshConfig.model_validate(
        {
            "name": "demo",
            "stores": {"traces": "sqlite:///state/t.db"},
            "tracing": {"capture_content": True, "max_spans": 10},
        }
    )
    with setup_tracing("orch", 1, mesh, base_dir=tmp_path, env={}) as handle:
        assert handle.capture_content is True
        assert handle.store_file == tmp_path / "state/t.db"
        assert handle.otlp_url is None
        assert handle.settings.mesh_name == "demo"
        with handle.tracer().start_as_current_span("x"):
            pass
    assert (tmp_path / "state/t.db").is_file()
    off = MeshConfig.model_validate({"tracing": {"enabled": False}})
    with setup_tracing("orch", 1, off, base_dir=tmp_path / "off") as handle:
        assert handle.store_file is None
    assert not (tmp_path / "off").exists()


def test_sampling_keeps_runs_whole(store_url: str) -> None:
    from microhive.tracing import server_span, tool_span

    sampled_parent = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    unsampled_parent = {"traceparent": "00-" + "ef" * 16 + "-" + "cd" * 8 + "-00"}
    with setup_tracing("svc", 0, TracingSettings(store_url=store_url, sample_ratio=0.0)) as handle:
        p = handle.provider
        with tool_span("new.run", provider=p) as fresh:  # a new trace: not sampled at 0
            assert not fresh.span.is_recording()
        with server_span("POST", "/a", headers=sampled_parent, provider=p) as joined:
            assert joined.span.is_recording()  # the caller sampled this run: keep it whole
        with server_span("POST", "/b", headers=unsampled_parent, provider=p) as skipped:
            assert not skipped.span.is_recording()
    with TraceStore(store_url) as store:
        assert [t.root_name for t in store.traces()] == ["POST /a"]


# Layouts before version 3 keyed spans by the hex trace id. Version 1 kept a per-trace
# summary table (with the run id), version 2 a run_id column on spans.
_OLD_SPANS = """
CREATE TABLE spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind TEXT NOT NULL, service TEXT NOT NULL, instance TEXT, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, status TEXT NOT NULL, status_message TEXT,
    attributes TEXT NOT NULL, events TEXT NOT NULL, links TEXT NOT NULL,
    resource TEXT NOT NULL{extra}, PRIMARY KEY (trace_id, span_id)
);
"""
_V1_SCHEMA = (
    _OLD_SPANS.format(extra="")
    + """
CREATE TABLE traces (
    trace_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL, error_count INTEGER NOT NULL, run_id TEXT
);
CREATE INDEX traces_by_start ON traces(start_ns);
CREATE INDEX traces_by_run ON traces(run_id);
"""
)
_V2_SCHEMA = (
    _OLD_SPANS.format(extra=", run_id TEXT")
    + """
CREATE INDEX spans_by_run ON spans(run_id) WHERE run_id IS NOT NULL;
PRAGMA user_version = 2;
"""
)


@pytest.mark.parametrize("version", [1, 2])
def test_a_store_written_by_an_older_version_is_migrated_and_keeps_its_run_ids(
    tmp_path: Path, version: int
) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(_V1_SCHEMA if version == 1 else _V2_SCHEMA)
        # written in the order b, a: the migrated store must keep that order
        for n, (trace, run_id) in enumerate((("b" * 32, None), ("a" * 32, "run-a"))):
            values = (trace, f"{n + 1:016x}", f"root {n}", 20 - n * 10, 25 - n * 10, '{"k": 1}')
            if version == 1:
                db.execute(
                    "INSERT INTO spans VALUES (?, ?, NULL, ?, 'SERVER', 'svc', NULL, ?, ?, "
                    "'UNSET', NULL, ?, '[]', '[]', '{}')",
                    values,
                )
                db.execute("INSERT INTO traces VALUES (?, 0, 0, 1, 0, ?)", (trace, run_id))
            else:
                db.execute(
                    "INSERT INTO spans VALUES (?, ?, NULL, ?, 'SERVER', 'svc', NULL, ?, ?, "
                    "'UNSET', NULL, ?, '[]', '[]', '{}', ?)",
                    (*values, run_id),
                )
    db.close()
    with TraceStore(f"sqlite:///{path}") as store:
        assert store.find("run-a") == "a" * 32
        assert [t.trace_id for t in store.traces()] == ["b" * 32, "a" * 32]  # by start
        assert store.traces()[1].run_id == "run-a"
        assert store.spans("a" * 32)[0].attributes == {"k": 1}
        assert store.find("aaaa") == "a" * 32
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"spans", "traces"}
        assert [r[0] for r in db.execute("SELECT trace_id FROM traces ORDER BY id")] == [
            "b" * 32,
            "a" * 32,
        ]
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    db.close()
    # and the migrated file takes new spans with their run ids
    exporter = SqliteSpanExporter(path)
    ctx = SpanContext(trace_id=0xC, span_id=0xC, is_remote=False)
    span = ReadableSpan("new", context=ctx, attributes={"microhive.run_id": "run-c"})
    assert exporter.export([span]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    with TraceStore(f"sqlite:///{path}") as store:
        assert store.find("run-c") == f"{0xC:032x}"
        assert store.count_spans() == 3


def test_spans_of_one_trace_from_several_batches_and_exporters_share_one_key(
    tmp_path: Path,
) -> None:
    """Each process sees a trace for the first time on its own; they must agree on it."""
    path = tmp_path / "t.db"
    first, second = SqliteSpanExporter(path), SqliteSpanExporter(path)
    spans = [
        ReadableSpan(f"s{n}", context=SpanContext(0xF00D, n + 1, False), start_time=n, end_time=n)
        for n in range(4)
    ]
    assert first.export(spans[:1]) is SpanExportResult.SUCCESS
    assert second.export(spans[1:3]) is SpanExportResult.SUCCESS
    assert first.export(spans[3:]) is SpanExportResult.SUCCESS
    first.shutdown()
    second.shutdown()
    with TraceStore(f"sqlite:///{path}") as store:
        (listed,) = store.traces()
        assert listed.span_count == 4
        assert [s.name for s in store.spans(f"{0xF00D:032x}")] == ["s0", "s1", "s2", "s3"]


def test_one_big_trace_does_not_hide_the_traces_before_it(tmp_path: Path) -> None:
    exporter = SqliteSpanExporter(tmp_path / "t.db")
    small = [
        ReadableSpan(f"small{n}", context=SpanContext(n + 1, 1, False), start_time=n, end_time=n)
        for n in range(3)
    ]
    big_ctx = [SpanContext(0xB16, n + 1, False) for n in range(1500)]
    big = [ReadableSpan("big", context=c, start_time=100, end_time=200) for c in big_ctx]
    assert exporter.export(small) is SpanExportResult.SUCCESS
    assert exporter.export(big) is SpanExportResult.SUCCESS
    exporter.shutdown()
    with TraceStore(f"sqlite:///{tmp_path / 't.db'}") as store:
        listed = store.traces(limit=4)
        assert [t.root_name for t in listed] == ["big", "small2", "small1", "small0"]
        assert listed[0].span_count == 1500
        assert store.last() == f"{0xB16:032x}"
