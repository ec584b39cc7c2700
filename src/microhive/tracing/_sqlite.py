"""The embedded trace store: one SQLite file every process of a mesh exports to.

Why SQLite: the default mesh runs on one machine with no servers, and a trace is
only useful when the spans of *all* its processes sit in one place. Each process
owns a :class:`SqliteSpanExporter` (behind a ``BatchSpanProcessor``, so export
runs on the SDK's worker thread, never on a request); the file is in WAL mode
with a busy timeout and every batch is one short ``BEGIN IMMEDIATE`` transaction,
so several writers take turns instead of failing.

Two tables. ``traces`` gives each trace id a small integer key, in the order
the store first saw the trace (so roughly start order: the newest traces have
the highest keys, and retention drops them from the low end). ``spans`` holds
one row per span under that key (span ids in hex, attributes/events/links as
JSON, the run id in its own column when a span carries ``microhive.run_id``).

Why the key: W3C trace ids are random, and an index that starts with them
takes every insert on a random leaf, so each batch writes nearly one index
page per span to the WAL. Measured while a store grew to its 200k-span default
limit, that pushed the insert from ~8 to ~17 us of CPU per span, against a flat
~4 us for keys that grow at one end. Now only the first sight of a trace in a
batch touches the ``traces`` index (a lookup, plus an insert the first time any
process sees it); spans land next to each other. That index is kept in order
too: a microhive tracer provider starts each trace id with the millisecond
clock (:mod:`microhive.tracing._ids`), so one batch's traces share a few index
pages instead of one random page each.

There is deliberately no per-trace summary (counts, first start, last end):
keeping one up to date cost an upsert per trace per batch in every process;
the reader aggregates one trace's rows through the key instead, cheap for the
handful of traces a list shows. Stores written by older versions are migrated
when opened (``PRAGMA user_version``).

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
#: Parameters per statement (SQLite's lowest compiled-in limit is 999).
_MAX_PARAMS = 900

_log = logging.getLogger(__name__)

_SCHEMA_VERSION = 3
#: The ``spans`` columns after the trace key, in the order rows are built.
_SPAN_FIELDS = (
    "span_id, parent_id, name, kind, service, instance, start_ns, end_ns, "
    "status, status_message, attributes, events, links, resource, run_id"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS spans (
    trace INTEGER NOT NULL,
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
    PRIMARY KEY (trace, span_id)
);
-- partial: written only for the few spans that carry a run id
CREATE INDEX IF NOT EXISTS spans_by_run ON spans(run_id) WHERE run_id IS NOT NULL;
"""
_INSERT = f"INSERT OR REPLACE INTO spans (trace, {_SPAN_FIELDS}) VALUES ({', '.join('?' * 16)})"


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
    """Bring the file to the current schema; safe when several processes open it at once.

    Older layouts keyed ``spans`` by the hex trace id: version 1 had a per-trace
    summary table (``traces``, with the run id), version 2 a ``run_id`` column.
    Their rows are copied under the new keys in their original order.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            old_spans = {r[1] for r in conn.execute("PRAGMA table_info(spans)")}
            keyed_by_hex = "trace_id" in old_spans
            if keyed_by_hex:
                conn.execute("ALTER TABLE spans RENAME TO old_spans")
                if "traces" in tables:
                    conn.execute("ALTER TABLE traces RENAME TO old_traces")
                for index in ("spans_by_run", "traces_by_start", "traces_by_run"):
                    conn.execute(f"DROP INDEX IF EXISTS {index}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if keyed_by_hex:
                if "run_id" in old_spans:
                    run_id = "s.run_id"
                elif "traces" in tables:
                    run_id = "(SELECT run_id FROM old_traces o WHERE o.trace_id = s.trace_id)"
                else:
                    run_id = "NULL"
                conn.execute(
                    "INSERT INTO traces (trace_id) SELECT trace_id FROM old_spans "
                    "GROUP BY trace_id ORDER BY min(rowid)"
                )
                fields = _SPAN_FIELDS.replace(", run_id", "")
                copied = ", ".join(f"s.{f.strip()}" for f in fields.split(","))
                conn.execute(
                    f"INSERT INTO spans (trace, {_SPAN_FIELDS}) SELECT t.id, {copied}, {run_id} "
                    "FROM old_spans s JOIN traces t ON t.trace_id = s.trace_id ORDER BY s.rowid"
                )
                conn.execute("DROP TABLE old_spans")
                conn.execute("DROP TABLE IF EXISTS old_traces")
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
                    keys = _trace_keys(conn, list(dict.fromkeys(row[0] for row in rows)))
                    conn.executemany(_INSERT, [(keys[row[0]], *row[1:]) for row in rows])
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


def _trace_keys(conn: sqlite3.Connection, trace_ids: list[str]) -> dict[str, int]:
    """The key of each trace id, new ones numbered in the order given (inside the write)."""
    new = [(t,) for t in trace_ids]
    conn.executemany("INSERT OR IGNORE INTO traces (trace_id) VALUES (?)", new)
    keys: dict[str, int] = {}
    for start in range(0, len(trace_ids), _MAX_PARAMS):
        chunk = trace_ids[start : start + _MAX_PARAMS]
        marks = ", ".join("?" * len(chunk))
        found = conn.execute(f"SELECT trace_id, id FROM traces WHERE trace_id IN ({marks})", chunk)
        keys.update(found.fetchall())
    return keys


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
        doomed: set[int] = set()
        if max_age_hours is not None:
            cutoff = time.time_ns() - int(max_age_hours * 3600e9)
            doomed.update(
                r[0]
                for r in conn.execute(
                    "SELECT trace FROM (SELECT DISTINCT trace FROM spans WHERE rowid < "
                    "coalesce((SELECT rowid FROM spans WHERE end_ns >= ?1 ORDER BY rowid LIMIT 1), "
                    "(SELECT max(rowid) + 1 FROM spans))) AS old "
                    "WHERE (SELECT max(end_ns) FROM spans s WHERE s.trace = old.trace) < ?1",
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
                            "SELECT DISTINCT trace FROM spans WHERE rowid <= ?", (beyond[0],)
                        )
                    )
        removed = 0
        for key in doomed:
            removed += conn.execute("DELETE FROM spans WHERE trace = ?", (key,)).rowcount
            conn.execute("DELETE FROM traces WHERE id = ?", (key,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed


#: Trace store backends by URL scheme (a PostgreSQL store would be added here).
_SCHEMES: dict[str, type[SqliteSpanExporter]] = {"sqlite": SqliteSpanExporter}
