"""The embedded trace store: one SQLite file every process of a mesh exports to.

Why SQLite: the default mesh runs on one machine with no servers, and a trace is
only useful when the spans of *all* its processes sit in one place. Each process
owns a :class:`SqliteSpanExporter` (behind a ``BatchSpanProcessor``, so export
runs on the SDK's worker thread, never on a request); the file is in WAL mode
with a busy timeout and every batch is one short ``BEGIN IMMEDIATE`` transaction,
so several writers take turns instead of failing.

Two tables: ``spans`` (one row per span, attributes/events/links as JSON) and
``traces`` (one row per trace, kept up to date on every batch: first start, last
end, span and error counts, the run id if any span carried ``microhive.run_id``).
The summary table makes "most recent traces" and retention cheap.

The read side is :class:`~microhive.tracing.TraceStore`. Stores load by URL
scheme through :data:`_SCHEMES`; only ``sqlite:///`` exists.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from microhive.errors import ConfigError, NotFound

__all__ = [
    "DEFAULT_STORE_URL",
    "RUN_ID_ATTRIBUTE",
    "SqliteSpanExporter",
    "connect",
    "prune",
    "store_path",
]

DEFAULT_STORE_URL = "sqlite:///.microhive/traces.db"
RUN_ID_ATTRIBUTE = "microhive.run_id"
_BUSY_TIMEOUT_MS = 10_000
_PRUNE_EVERY_S = 30.0
_YIELD_EVERY = 16

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    service TEXT NOT NULL,
    instance TEXT,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    links TEXT NOT NULL,
    resource TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL,
    error_count INTEGER NOT NULL,
    run_id TEXT
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces(start_ns);
CREATE INDEX IF NOT EXISTS traces_by_run ON traces(run_id);
"""


def store_path(url: str, base_dir: str | Path | None = None) -> Path:
    """The file a ``sqlite:///`` URL names; a relative path is taken from ``base_dir``.

    ``sqlite:///.microhive/traces.db`` is relative (three slashes),
    ``sqlite:////var/lib/traces.db`` absolute (four), as SQLAlchemy spells them.
    """
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigError(f"trace store URL {url!r}: unsupported scheme (supported: {known})")
    if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
        raise ConfigError(
            f"trace store URL {url!r}: expected sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    raw = Path(parts.path[1:])
    if raw.is_absolute() or base_dir is None:
        return raw
    return Path(base_dir) / raw


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise NotFound(f"no trace store at {path}: no traced service has run here yet")
    conn = sqlite3.connect(
        str(path), timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    if create:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
    return conn


# ------------------------------------------------------------------ writing


# The export thread runs this for every span, so it avoids per-call set-up:
# one encoder, enum names looked up once, event and link lists read once.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
_dump = _ENCODER.encode
_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_STATUS_NAMES = {code: code.name for code in StatusCode}


def _attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # tuples encode as JSON arrays, so a plain dict copy is enough
    return dict(attributes) if attributes else {}


def _row(span: ReadableSpan, resources: dict[int, tuple[str, str | None, str]]) -> tuple[Any, ...]:
    """One ``spans`` row. ``resources`` caches the encoded resource: a process has one."""
    ctx = span.get_span_context()
    assert ctx is not None  # an SDK span always has one
    cached = resources.get(id(span.resource))
    if cached is None:
        resource = _attrs(span.resource.attributes)
        cached = resources[id(span.resource)] = (
            str(resource.get("service.name", "unknown")),
            resource.get("service.instance.id"),
            _dump(resource),
        )
    events = span.events
    links = span.links
    parent = span.parent
    start = span.start_time or 0
    status = span.status
    return (
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(parent.span_id, "016x") if parent is not None else None,
        span.name,
        _KIND_NAMES[span.kind],
        cached[0],
        cached[1],
        start,
        span.end_time or start,
        _STATUS_NAMES[status.status_code],
        status.description,
        _dump(_attrs(span.attributes)),
        _dump(
            [
                {"name": e.name, "time_ns": e.timestamp, "attributes": _attrs(e.attributes)}
                for e in events
            ]
        )
        if events
        else "[]",
        _dump(
            [
                {
                    "trace_id": format(link.context.trace_id, "032x"),
                    "span_id": format(link.context.span_id, "016x"),
                    "attributes": _attrs(link.attributes),
                }
                for link in links
            ]
        )
        if links
        else "[]",
        cached[2],
    )


class SqliteSpanExporter(SpanExporter):
    """Writes finished spans to the shared SQLite store; safe to use from several processes.

    Retention runs here too (at most every 30 s, inside the export thread), so a
    long-lived mesh does not grow its store without bound.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_spans: int | None = None,
        max_age_hours: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_spans = max_spans
        self.max_age_hours = max_age_hours
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._next_prune = 0.0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, create=True)
        return self._conn

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        resources: dict[int, tuple[str, str | None, str]] = {}
        rows = []
        for n, span in enumerate(spans, 1):
            rows.append(_row(span, resources))
            if n % _YIELD_EVERY == 0:
                # Let the service's own threads have the GIL: without this a big
                # batch holds it for milliseconds and every request waits behind it.
                time.sleep(0)
        summaries: dict[str, list[Any]] = {}
        for span, row in zip(spans, rows, strict=True):
            run_id = (span.attributes or {}).get(RUN_ID_ATTRIBUTE)
            s = summaries.setdefault(row[0], [row[7], row[8], 0, 0, None])
            s[0], s[1] = min(s[0], row[7]), max(s[1], row[8])
            s[2] += 1
            s[3] += row[9] == StatusCode.ERROR.name
            s[4] = s[4] or (str(run_id) if run_id is not None else None)
        try:
            with self._lock:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR REPLACE INTO spans VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    conn.executemany(
                        "INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(trace_id) DO UPDATE SET "
                        "start_ns = min(start_ns, excluded.start_ns), "
                        "end_ns = max(end_ns, excluded.end_ns), "
                        "span_count = span_count + excluded.span_count, "
                        "error_count = error_count + excluded.error_count, "
                        "run_id = coalesce(run_id, excluded.run_id)",
                        [(tid, *s) for tid, s in summaries.items()],
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + _PRUNE_EVERY_S
                    prune(conn, self.max_spans, self.max_age_hours)
        except (sqlite3.Error, OSError) as exc:
            _log.warning("trace store %s: could not export %d spans: %s", self.path, len(rows), exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def prune(conn: sqlite3.Connection, max_spans: int | None, max_age_hours: float | None) -> int:
    """Drop whole traces, oldest first, beyond the span or age limit. Returns spans removed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        doomed: set[str] = set()
        if max_age_hours is not None:
            cutoff = time.time_ns() - int(max_age_hours * 3600e9)
            doomed.update(
                r[0]
                for r in conn.execute("SELECT trace_id FROM traces WHERE end_ns < ?", (cutoff,))
            )
        if max_spans is not None:
            doomed.update(
                r[0]
                for r in conn.execute(
                    "SELECT trace_id FROM (SELECT trace_id, "
                    "sum(span_count) OVER (ORDER BY start_ns DESC, trace_id) AS total "
                    "FROM traces) WHERE total > ?",
                    (max_spans,),
                )
            )
        removed = 0
        for trace_id in doomed:
            removed += conn.execute("DELETE FROM spans WHERE trace_id = ?", (trace_id,)).rowcount
            conn.execute("DELETE FROM traces WHERE trace_id = ?", (trace_id,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed


#: Trace store backends by URL scheme (a PostgreSQL store would be added here).
_SCHEMES: dict[str, type[SqliteSpanExporter]] = {"sqlite": SqliteSpanExporter}
