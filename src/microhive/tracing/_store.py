"""Reading the embedded trace store: the trace list, one trace's spans, lookups.

:class:`TraceStore` is what ``microhive trace`` and the dashboard use. A trace
is found by a run id (any span's ``microhive.run_id``), by a trace id or a
prefix of at least 4 hex digits, or as the most recent one. The file format and
the writing side live in :mod:`microhive.tracing._sqlite`.

Background traces (a root span with ``microhive.background``, see
:mod:`microhive.tracing._background`) are told apart when reading: the list and
:meth:`TraceStore.last` can leave them out, at the cost of looking at the root
rows of the traces they skip; writing is untouched.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from opentelemetry.trace import StatusCode

from microhive.errors import InvalidInput, NotFound
from microhive.tracing._background import BACKGROUND_ATTRIBUTE
from microhive.tracing._sqlite import _SPAN_FIELDS, DEFAULT_STORE_URL, connect, prune, store_path

__all__ = ["StoredSpan", "TraceStore", "TraceSummary"]

_MIN_PREFIX = 4


@dataclass(frozen=True, slots=True)
class StoredSpan:
    """One span as the store keeps it (ids in hex, times in Unix nanoseconds)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    instance: str | None
    start_ns: int
    end_ns: int
    status: str
    status_message: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def error(self) -> bool:
        return self.status == StatusCode.ERROR.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "kind": self.kind,
            "service": self.service,
            "instance": self.instance,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_ms": round(self.duration_ms, 3),
            "status": self.status,
            "status_message": self.status_message,
            "attributes": self.attributes,
            "events": self.events,
            "links": self.links,
            "resource": self.resource,
        }


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One line of the trace list."""

    trace_id: str
    start_ns: int
    end_ns: int
    span_count: int
    error_count: int
    run_id: str | None
    root_name: str
    root_service: str
    service_count: int
    #: Started by background work (polling, health checks), not by a request.
    background: bool = False

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def error(self) -> bool:
        return self.error_count > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "run_id": self.run_id,
            "root": self.root_name,
            "root_service": self.root_service,
            "services": self.service_count,
            "spans": self.span_count,
            "errors": self.error_count,
            "start_ns": self.start_ns,
            "duration_ms": round(self.duration_ms, 3),
            "background": self.background,
        }


#: Whether a span row is a root marked as background (SQL, on the ``spans`` columns).
_BACKGROUND_ROOT = (
    f"(parent_id IS NULL AND json_extract(attributes, '$.\"{BACKGROUND_ATTRIBUTE}\"') IS 1)"
)
#: The newest trace keys whose trace has no background root.
_NEWEST_FOREGROUND = (
    "SELECT t.id, t.trace_id FROM traces t WHERE NOT EXISTS (SELECT 1 FROM spans "
    f"WHERE trace = t.id AND {_BACKGROUND_ROOT}) ORDER BY t.id DESC LIMIT ?"
)

#: Latest active traces :meth:`TraceStore.last` picks the newest start from.
_LAST_CANDIDATES = 20


def _span(trace_id: str, row: sqlite3.Row | tuple[Any, ...]) -> StoredSpan:
    """A span from a row of :data:`~microhive.tracing._sqlite._SPAN_FIELDS`."""
    return StoredSpan(
        trace_id=trace_id,
        span_id=row[0],
        parent_id=row[1],
        name=row[2],
        kind=row[3],
        service=row[4],
        instance=row[5],
        start_ns=row[6],
        end_ns=row[7],
        status=row[8],
        status_message=row[9],
        attributes=json.loads(row[10]),
        events=json.loads(row[11]),
        links=json.loads(row[12]),
        resource=json.loads(row[13]),
    )


class TraceStore:
    """Read (and prune) the embedded trace store.

    The queries are short synchronous SQLite reads; async code (the dashboard)
    should call them through ``anyio.to_thread.run_sync``. Usable as a sync or
    async context manager; :meth:`close` / :meth:`aclose` release the file.
    """

    def __init__(self, url: str = DEFAULT_STORE_URL, *, base_dir: str | Path | None = None):
        self.url = url
        self.path = store_path(url, base_dir)
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, create=False)
        return self._conn

    # -------------------------------------------------------------- queries

    def traces(self, limit: int = 20, *, background: bool = True) -> list[TraceSummary]:
        """The most recent traces, newest start first, with root span, services, errors.

        "Recent" is the order the store first saw them in (its trace keys), which
        is their start order up to the exporters' half-second batching. With
        ``background=False`` background traces are skipped (the ``limit`` counts
        the others): a poller's traces do not push a run off the list.
        """
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        query = (
            "SELECT id, trace_id FROM traces ORDER BY id DESC LIMIT ?"
            if background
            else _NEWEST_FOREGROUND
        )
        newest = self._db().execute(query, (limit,))
        found = [s for s in (self._summary(*row) for row in newest.fetchall()) if s is not None]
        found.sort(key=lambda t: (-t.start_ns, t.trace_id))
        return found

    def _key(self, trace_id: str) -> int | None:
        row = self._db().execute("SELECT id FROM traces WHERE trace_id = ?", (trace_id,))
        found = row.fetchone()
        return None if found is None else int(found[0])

    def _summary(self, key: int, trace_id: str) -> TraceSummary | None:
        db = self._db()
        start, end, count, errors, run_id, services, background = db.execute(
            "SELECT min(start_ns), max(end_ns), count(*), sum(status = ?), max(run_id), "
            f"count(DISTINCT service), max({_BACKGROUND_ROOT}) FROM spans WHERE trace = ?",
            (StatusCode.ERROR.name, key),
        ).fetchone()
        if not count:
            return None
        root = db.execute(
            "SELECT name, service FROM spans s WHERE trace = ?1 AND (parent_id IS NULL "
            "OR NOT EXISTS (SELECT 1 FROM spans p WHERE p.trace = ?1 "
            "AND p.span_id = s.parent_id)) ORDER BY start_ns LIMIT 1",
            (key,),
        ).fetchone()
        name, service = root if root is not None else ("?", "?")
        return TraceSummary(
            trace_id=trace_id,
            start_ns=start,
            end_ns=end,
            span_count=count,
            error_count=errors,
            run_id=run_id,
            root_name=name,
            root_service=service,
            service_count=services,
            background=bool(background),
        )

    def spans(self, trace_id: str) -> list[StoredSpan]:
        """Every stored span of one trace (full 32-digit id), in start order."""
        trace_id = trace_id.lower()
        key = self._key(trace_id)
        if key is None:
            return []
        rows = self._db().execute(
            f"SELECT {_SPAN_FIELDS} FROM spans WHERE trace = ? ORDER BY start_ns, span_id", (key,)
        )
        return [_span(trace_id, r) for r in rows.fetchall()]

    def summary(self, trace_id: str) -> TraceSummary:
        trace_id = trace_id.lower()
        key = self._key(trace_id)
        found = None if key is None else self._summary(key, trace_id)
        if found is None:
            raise NotFound(f"no trace {trace_id} in {self.path}")
        return found

    def find(self, ref: str) -> str:
        """The trace id for a run id or a trace id prefix (at least 4 hex digits).

        A run id wins over a prefix; an ambiguous prefix is an error listing the matches.
        """
        ref = ref.strip()
        if not ref:
            raise InvalidInput("give a run id or a trace id (or --last)")
        db = self._db()
        row = db.execute(
            "SELECT t.trace_id FROM spans s JOIN traces t ON t.id = s.trace "
            "WHERE s.run_id = ? ORDER BY s.start_ns DESC LIMIT 1",
            (ref,),
        ).fetchone()
        if row is not None:
            return str(row[0])
        prefix = ref.lower()
        if len(prefix) >= _MIN_PREFIX and all(c in "0123456789abcdef" for c in prefix):
            matches = [
                r[0]
                for r in db.execute(
                    "SELECT trace_id FROM traces WHERE trace_id >= ? AND trace_id < ? LIMIT 6",
                    (prefix, prefix + "g"),
                )
            ]
            if len(matches) == 1:
                return str(matches[0])
            if len(matches) > 1:
                shown = ", ".join(m[:16] for m in matches[:5])
                raise InvalidInput(
                    f"trace id prefix {ref!r} is ambiguous ({shown}, ...); give more digits"
                )
        raise NotFound(f"no trace with run id or trace id {ref!r} in {self.path}")

    def last(self, *, background: bool = True) -> str:
        """The id of the most recently started trace (among the latest active ones).

        ``background=False`` skips background traces (polling, health checks).
        """
        found = self.traces(limit=_LAST_CANDIDATES, background=background)
        if not found:
            other = "" if background else " other than background ones (polling, health checks)"
            raise NotFound(f"the trace store {self.path} holds no traces yet{other}")
        return found[0].trace_id

    def prune(self, *, max_spans: int | None = None, max_age_hours: float | None = None) -> int:
        """Drop whole traces, oldest first, beyond the limits; returns the spans removed."""
        return prune(self._db(), max_spans, max_age_hours)

    def count_spans(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM spans").fetchone()[0])

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> TraceStore:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
