"""The embedded search index: SQLite FTS5 for BM25, an in-memory matrix for vectors.

Chunks live in the ``chunks`` table (text + float32 vector blob); FTS5 keeps its
inverted index in step through triggers. For vector search the live vectors are
also held in memory by :class:`~microhive.workspace.vectors.VectorMatrix`
(contiguous, pre-normalised, with an int8 copy for a fast first pass and an
exact float32 re-score), so a query never reads the database for vectors.

The :class:`Indexer` drains the durable queue (versions in state ``pending``),
so a restart resumes exactly where the previous process stopped.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import anyio
import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from microhive.embeddings import Embedder
from microhive.workspace.local import LocalStore
from microhive.workspace.model import FULL_ACCESS, FileInfo, Grant, SearchHit
from microhive.workspace.rules import row_to_info
from microhive.workspace.search import (
    KEYWORD_WEIGHT,
    check_search,
    fts_query,
    highlight,
    query_terms,
    rrf,
)
from microhive.workspace.text import chunk_text, extract_text
from microhive.workspace.vectors import VectorMatrix

__all__ = ["Indexer", "LocalIndex", "SearchMode"]

log = logging.getLogger("microhive.workspace.index")
SearchMode = str  # "hybrid" | "keyword" | "vector"
_CANDIDATES = 50


class LocalIndex:
    """Hybrid search over the chunks of one :class:`LocalStore`."""

    def __init__(
        self, store: LocalStore, embedder: Embedder, *, vector_kernel: str | None = None
    ) -> None:
        self.store = store
        self.embedder = embedder
        self._vectors = VectorMatrix(embedder.dimension, kernel=vector_kernel)
        # BM25 runs on its own read connection in a helper thread while numpy
        # scores the vectors here: both release the GIL, so hybrid costs about
        # max(keyword, vector) rather than their sum. WAL lets it read alongside.
        self._reader = sqlite3.connect(
            store.root / "workspace.db", check_same_thread=False, isolation_level=None
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workspace-bm25")
        self._load()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._reader.close()

    def _load(self) -> None:
        db = self.store.db
        stale = db.execute(
            "SELECT COUNT(*) FROM chunks WHERE model != ?", (self.embedder.name,)
        ).fetchone()[0]
        if stale:
            # Vectors from another model are not comparable: re-index those files.
            log.info("re-indexing %d chunks made with another embedder", stale)
            with self.store.transaction():
                db.execute(
                    "UPDATE versions SET index_state='pending', index_error=NULL WHERE (ws, path, "
                    "version) IN (SELECT ws, path, version FROM chunks WHERE model != ?)",
                    (self.embedder.name,),
                )
                db.execute("DELETE FROM chunks WHERE model != ?", (self.embedder.name,))
        ids: list[int] = []
        blobs: list[bytes] = []
        metas: list[tuple[str, str, str]] = []
        for cid, ws, path, ctype, vec in db.execute(
            "SELECT id, ws, path, content_type, vector FROM chunks ORDER BY id"
        ):
            ids.append(cid)
            blobs.append(vec)
            metas.append((ws, path, ctype))
        if ids:
            matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), -1)
            self._vectors.add(ids, matrix, metas)

    # ------------------------------------------------------------- indexing

    def pending(self, limit: int = 16) -> list[FileInfo]:
        rows = self.store.db.execute(
            "SELECT v.ws, v.path, v.version, v.size, v.content_type, v.sha256, v.author, "
            "v.trace_id, f.created_at, v.created_at, v.deleted, v.index_state, v.index_error "
            "FROM versions v JOIN files f ON f.ws=v.ws AND f.path=v.path "
            "WHERE v.index_state='pending' ORDER BY v.rowid LIMIT ?",
            (limit,),
        ).fetchall()
        return [row_to_info(r) for r in rows]

    def prepare(
        self, infos: list[FileInfo]
    ) -> list[tuple[FileInfo, list[str], NDArray[np.float32]] | tuple[FileInfo, Exception]]:
        """Extract, chunk and embed several versions (CPU work: run in a thread).

        All their chunks go through the model in one call: bigger batches run
        several times faster than one small file at a time.
        """
        texts: list[tuple[FileInfo, list[str]] | tuple[FileInfo, Exception]] = []
        for info in infos:
            try:
                text = extract_text(self.store.read_blob(info.sha256), info.content_type)
                texts.append((info, chunk_text(text)))
            except Exception as exc:  # a bad file must not stop the batch
                texts.append((info, exc))
        flat = [c for item in texts if isinstance(item[1], list) for c in item[1]]
        vectors = self.embedder.embed(flat) if flat else np.zeros((0, 1), np.float32)
        out: list[tuple[FileInfo, list[str], NDArray[np.float32]] | tuple[FileInfo, Exception]]
        out, at = [], 0
        for info, chunks in texts:
            if isinstance(chunks, Exception):
                out.append((info, chunks))
            else:
                out.append((info, chunks, vectors[at : at + len(chunks)]))
                at += len(chunks)
        return out

    def commit(self, info: FileInfo, chunks: list[str], vectors: NDArray[np.float32]) -> bool:
        """Store the chunks if ``info`` is still the current version; True if stored."""
        db = self.store.db
        removed: list[int] = []
        added: list[int] = []
        with self.store.transaction():
            current = db.execute(
                "SELECT version, deleted FROM files WHERE ws=? AND path=?",
                (info.workspace, info.path),
            ).fetchone()
            key = (info.workspace, info.path, info.version)
            if current is None or current[0] != info.version or current[1]:
                db.execute(
                    "UPDATE versions SET index_state='superseded' WHERE ws=? AND path=? "
                    "AND version=?",
                    key,
                )
                return False
            removed = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM chunks WHERE ws=? AND path=?", (info.workspace, info.path)
                )
            ]
            db.execute("DELETE FROM chunks WHERE ws=? AND path=?", (info.workspace, info.path))
            for i, (text, vec) in enumerate(zip(chunks, vectors, strict=True)):
                cur = db.execute(
                    "INSERT INTO chunks (ws, path, version, ordinal, content_type, text, model, "
                    "vector) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        *key,
                        i,
                        info.content_type,
                        text,
                        self.embedder.name,
                        np.asarray(vec, dtype=np.float32).tobytes(),
                    ),
                )
                added.append(int(cur.lastrowid or 0))
            db.execute(
                "UPDATE versions SET index_state='indexed', index_error=NULL WHERE ws=? "
                "AND path=? AND version=?",
                key,
            )
            indexed = self.store.info(info.workspace, info.path, version=info.version)
            self.store.add_event("file.indexed", indexed)
        self._vectors.remove(removed)
        if added:
            meta = (info.workspace, info.path, info.content_type)
            self._vectors.add(added, vectors, [meta] * len(added))
        return True

    def fail(self, info: FileInfo, reason: str) -> None:
        with self.store.transaction():
            self.store.db.execute(
                "UPDATE versions SET index_state='failed', index_error=? WHERE ws=? AND path=? "
                "AND version=?",
                (reason[:500], info.workspace, info.path, info.version),
            )

    def forget_removed(self) -> None:
        """Drop matrix rows whose chunks the store deleted (overwrite/delete/move)."""
        self._vectors.remove(self.store.take_removed_chunks())

    # --------------------------------------------------------------- search

    def search(
        self,
        ws: str,
        query: str,
        *,
        folder: str | None = None,
        content_types: Sequence[str] | None = None,
        limit: int = 10,
        mode: SearchMode = "hybrid",
        grant: Grant = FULL_ACCESS,
        query_vector: NDArray[np.float32] | None = None,
    ) -> list[SearchHit]:
        """Keyword, vector or fused (RRF) search of one workspace's current files."""
        ws, folder_ = check_search(ws, folder, query, mode=mode, limit=limit)
        types = tuple(content_types or ())
        self.forget_removed()
        depth = max(_CANDIDATES, limit)
        keyword: list[int] = []
        vector: list[int] = []
        pending: Future[list[int]] | None = None
        if mode in ("hybrid", "keyword") and query_terms(query):
            pending = self._pool.submit(self._keyword, ws, query, folder_, types, depth, grant)
        try:
            if mode in ("hybrid", "vector"):
                q = self.embedder.embed([query])[0] if query_vector is None else query_vector
                vector = self._vectors.top(
                    q, depth, ws=ws, folder=folder_, types=types, allowed=grant.folders
                )
        finally:
            if pending is not None:
                keyword = pending.result()
        fused = rrf([keyword, vector], [KEYWORD_WEIGHT, 1.0])
        best = sorted(fused, key=lambda c: -fused[c])[:limit]
        return self._hits(best, fused, keyword, vector, query_terms(query))

    def _keyword(
        self, ws: str, query: str, folder: str, types: tuple[str, ...], depth: int, grant: Grant
    ) -> list[int]:
        sql = (
            "SELECT c.id, c.path, c.content_type FROM chunks_fts JOIN chunks c "
            "ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? AND c.ws = ?"
        )
        args: list[object] = [fts_query(query), ws]
        if folder:
            sql += " AND substr(c.path, 1, ?) = ?"
            args += [len(folder) + 1, folder + "/"]
        # ORDER BY rank (= bm25) lets FTS5 sort inside the virtual table instead of
        # SQLite sorting the joined rows: same order, 2-3x faster at 100k chunks.
        sql += " ORDER BY rank LIMIT ?"
        args.append(depth * 4 if (types or grant.folders) else depth)
        out: list[int] = []
        for cid, path, ctype in self._reader.execute(sql, args):
            if types and not any(ctype.startswith(t) for t in types):
                continue
            if not grant.allows(path):
                continue
            out.append(cid)
            if len(out) == depth:
                break
        return out

    def _hits(
        self,
        ids: list[int],
        fused: dict[int, float],
        keyword: list[int],
        vector: list[int],
        terms: list[str],
    ) -> list[SearchHit]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {
            r[0]: r
            for r in self.store.db.execute(
                f"SELECT id, path, version, ordinal, content_type, text FROM chunks "
                f"WHERE id IN ({marks})",
                ids,
            )
        }
        kr = {c: i + 1 for i, c in enumerate(keyword)}
        vr = {c: i + 1 for i, c in enumerate(vector)}
        hits = []
        for cid in ids:
            row = rows.get(cid)
            if row is None:
                continue
            hits.append(
                SearchHit(
                    path=row[1],
                    version=row[2],
                    chunk=row[3],
                    score=round(fused[cid], 6),
                    snippet=highlight(row[5], terms),
                    content_type=row[4],
                    keyword_rank=kr.get(cid),
                    vector_rank=vr.get(cid),
                )
            )
        return hits


class Indexer:
    """Background loop: index pending versions one small batch at a time."""

    def __init__(self, index: LocalIndex) -> None:
        self.index = index
        self._wake = anyio.Event()

    def notify(self) -> None:
        """Something was written: look at the queue now rather than at the next poll."""
        self._wake.set()

    async def run_once(self) -> int:
        """Index what is pending now; returns how many versions were processed."""
        done = 0
        while batch := self.index.pending():
            started = time.perf_counter()
            for result in await anyio.to_thread.run_sync(self.index.prepare, batch):
                info = result[0]
                if len(result) == 2:
                    exc = result[1]
                    log.warning("indexing %s v%d failed: %s", info.path, info.version, exc)
                    self.index.fail(info, f"{type(exc).__name__}: {exc}")
                else:
                    self.index.commit(info, result[1], result[2])
                done += 1
            log.debug("indexed %d versions in %.3fs", len(batch), time.perf_counter() - started)
        self.index.forget_removed()
        return done

    async def run(self, poll: float = 1.0) -> None:
        """Run until cancelled."""
        while True:
            self._wake = anyio.Event()
            await self.run_once()
            with anyio.move_on_after(poll):
                await self._wake.wait()
