"""The hive indexer: keeps a keyword index (SQLite FTS5) of every file event's text.

On ``file.created`` / ``file.updated`` it stores the text under its path and
publishes ``file.indexed``. Redelivered events are harmless: the row is keyed by
path (the newest event wins) and the follow-up event's id is derived from the
handled one, so the bus drops the duplicate. The index lives in
``<state_dir>/hive/index.db``; :meth:`Indexer.search` queries it.

This is the embedded stand-in until the workspace service (with hybrid search)
owns indexing; it does real work so the hive demo shows real results.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microhive.bus import Bus, Delivery
from microhive.errors import InvalidInput
from microhive.hive._base import FileSource, Reactor, file_source, hive_service

if TYPE_CHECKING:
    from microhive.service import Service, ServiceContext

__all__ = ["Indexer", "create_service"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    path TEXT PRIMARY KEY, words INTEGER NOT NULL, indexed_at REAL NOT NULL, event_id TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS docs_fts USING fts5(path UNINDEXED, text);
"""


class Indexer(Reactor):
    subjects = ("file.created", "file.updated")

    def __init__(self, db_path: Path, files: Path | FileSource) -> None:
        super().__init__()
        self.db_path = db_path
        self.files = files if isinstance(files, FileSource) else FileSource(files)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self, bus: Bus) -> None:
        await super().open(bus)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(_SCHEMA)
        self._db = db

    async def aclose(self) -> None:
        await self.files.aclose()
        if self._db is not None:
            self._db.close()
            self._db = None

    def _store(self, path: str, text: str, event_id: str) -> int:
        assert self._db is not None
        words = len(text.split())
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM docs_fts WHERE path = ?", (path,))
            db.execute("INSERT INTO docs_fts(path, text) VALUES (?, ?)", (path, text))
            db.execute(
                "INSERT OR REPLACE INTO docs(path, words, indexed_at, event_id) VALUES (?,?,?,?)",
                (path, words, time.time(), event_id),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return words

    async def react(self, msg: Delivery) -> dict[str, Any]:
        path, text = await self.files.read(msg.json())
        async with self._lock:  # one writer per connection
            words = await asyncio.to_thread(self._store, path, text, msg.msg_id)
        await self.bus.publish(
            "file.indexed", {"path": path, "words": words}, msg_id=f"indexed:{msg.msg_id}"[:256]
        )
        return {"path": path, "words": words}

    def search(self, query: str, limit: int = 10) -> list[dict[str, Any]]:
        """Paths whose text matches ``query`` (FTS5 syntax), best first, with a snippet."""
        if self._db is None:
            raise InvalidInput("the index is not open")
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("search: query must be a non-empty string")
        terms = " ".join(f'"{t}"' for t in query.replace('"', " ").split())
        rows = self._db.execute(
            "SELECT path, snippet(docs_fts, 1, '[', ']', '...', 12) FROM docs_fts "
            "WHERE docs_fts MATCH ? ORDER BY rank LIMIT ?",
            (terms, max(1, min(limit, 100))),
        ).fetchall()
        return [{"path": p, "snippet": s} for p, s in rows]

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        if self._db is not None:
            out["documents"] = self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        return out


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``hive-indexer``; ``GET /search?q=...`` queries the index."""
    from starlette.requests import Request

    indexer = Indexer(ctx.state_dir / "hive" / "index.db", file_source(ctx))
    service = hive_service(ctx, indexer)

    async def search(request: Request) -> dict[str, Any]:
        limit = request.query_params.get("limit", "10")
        if not limit.isdigit():
            raise InvalidInput(f"limit: expected a whole number, got {limit!r}")
        return {"results": indexer.search(request.query_params.get("q", ""), int(limit))}

    service.add_route("/search", search)
    return service
