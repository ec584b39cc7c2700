"""The embedded trace store: one SQLite file every process of a mesh exports to.

Why SQLite: the default mesh runs on one machine with no servers, and a trace is
only useful when the spans of *all* its processes sit in one place. Each process
owns a :class:`SqliteSpanExporter` (behind a ``BatchSpanProcessor``, so export
runs on the SDK's worker thread, never on a request); the file is in WAL mode
with a busy timeout and every batch is one short ``BEGIN IMMEDIATE`` transaction,
so several writers take turns instead of failing.

One table, ``spans``: one row per span (ids in hex, attributes/events/links as
JSON, the run id in its own column when a span carries ``microhive.run_id``).
Rows are appended as they are exported, so ``rowid`` order is roughly time
order: the newest rows belong to the newest traces, and retention drops traces
from the low end. There is deliberately no per-trace summary table: keeping one
up to date cost an upsert (three B-trees) per trace per batch in every process,
more than the span insert itself; the reader aggregates one trace's rows through
the primary-key index instead, which is cheap for the handful of traces a list
shows. Stores written by older versions (which had a ``traces`` table) are
migrated when opened (``PRAGMA user_version``).

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

_SCHEMA_VERSION = 2
_SPAN_COLUMNS = (
    "trace_id, span_id, parent_id, name, kind, service, instance, start_ns, end_ns, "
    "status, status_message, attributes, events, links, resource, run_id"
)
_CREATE_SPANS = """
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
    run_id TEXT,
    PRIMARY KEY (trace_id, span_id)
)
"""
# Partial: the index is only written for the few spans that carry a run id.
_CREATE_RUN_INDEX = (
    "CREATE INDEX IF NOT EXISTS spans_by_run ON spans(run_id) WHERE run_id IS NOT NULL"
)
_INSERT = f"INSERT OR REPLACE INTO spans ({_SPAN_COLUMNS}) VALUES ({', '.join('?' * 16)})"


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
    if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
        _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the file to the current schema; safe when several processes open it at once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
            listed = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {r[0] for r in listed}
            conn.execute(_CREATE_SPANS)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(spans)")}
            if "run_id" not in columns:  # version 1: run ids lived in the traces table
                conn.execute("ALTER TABLE spans ADD COLUMN run_id TEXT")
            if "traces" in tables:
                conn.execute(
                    "UPDATE spans SET run_id = (SELECT run_id FROM traces t "
                    "WHERE t.trace_id = spans.trace_id) WHERE trace_id IN "
                    "(SELECT trace_id FROM traces WHERE run_id IS NOT NULL)"
                )
                conn.execute("DROP TABLE traces")
            conn.execute(_CREATE_RUN_INDEX)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ------------------------------------------------------------------ writing


# The export thread runs this for every span, so it avoids per-call set-up:
# one encoder, enum names looked up once, event and link lists read once.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
_dump = _ENCODER.encode
_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_STATUS_NAMES = {code: code.name for code in StatusCode}


def _attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # Tuples encode as JSON arrays, so a plain dict copy is enough. The SDK hands
    # out a read-only proxy over its BoundedAttributes; their ``copy()`` is one C
    # call, where dict(...) would walk them through Python-level __iter__/__getitem__.
    if not attributes:
        return {}
    copy = getattr(attributes, "copy", None)
    return copy() if copy is not None else dict(attributes)


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
    attributes = _attrs(span.attributes)
    run_id = attributes.get(RUN_ID_ATTRIBUTE)
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
        _dump(attributes),
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
        None if run_id is None else str(run_id),
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
        try:
            with self._lock:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_INSERT, rows)
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
    """Drop whole traces, oldest first, beyond the span or age limit. Returns spans removed.

    Rows are appended in export order, so old traces sit at the low ``rowid`` end
    and both limits are found from there without scanning the young rows:

    * age: the traces among the rows before the first one that ended after the
      cutoff, unless a later span of theirs did (a long run is kept whole);
    * count: the traces with a row among the oldest ``count - max_spans`` rows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        doomed: set[str] = set()
        if max_age_hours is not None:
            cutoff = time.time_ns() - int(max_age_hours * 3600e9)
            doomed.update(
                r[0]
                for r in conn.execute(
                    "SELECT trace_id FROM (SELECT DISTINCT trace_id FROM spans WHERE rowid < "
                    "coalesce((SELECT rowid FROM spans WHERE end_ns >= ?1 ORDER BY rowid LIMIT 1), "
                    "(SELECT max(rowid) + 1 FROM spans))) AS old "
                    "WHERE (SELECT max(end_ns) FROM spans s WHERE s.trace_id = old.trace_id) < ?1",
                    (cutoff,),
                )
            )
        if max_spans is not None:
            low, high = conn.execute("SELECT min(rowid), max(rowid) FROM spans").fetchone()
            # rowids are unique, so high - low + 1 bounds the count without a scan
            if low is not None and high - low + 1 > max_spans:
                beyond = conn.execute(
                    "SELECT rowid FROM spans ORDER BY rowid DESC LIMIT 1 OFFSET ?", (max_spans,)
                ).fetchone()
                if beyond is not None:
                    doomed.update(
                        r[0]
                        for r in conn.execute(
                            "SELECT DISTINCT trace_id FROM spans WHERE rowid <= ?", (beyond[0],)
                        )
                    )
        removed = 0
        for trace_id in doomed:
            removed += conn.execute("DELETE FROM spans WHERE trace_id = ?", (trace_id,)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed


#: Trace store backends by URL scheme (a PostgreSQL store would be added here).
_SCHEMES: dict[str, type[SqliteSpanExporter]] = {"sqlite": SqliteSpanExporter}
