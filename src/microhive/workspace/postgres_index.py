"""PostgreSQL workspace, second half: the pending-index queue and hybrid search.

A mixin of :class:`~microhive.workspace.postgres.PostgresBackend` (which owns the
pool, the schema and the event outbox); split out along the files / index seam.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from microhive.context import CallContext
from microhive.embeddings import Embedder
from microhive.workspace.model import FULL_ACCESS, FileInfo, Grant, SearchHit
from microhive.workspace.postgres_schema import COLS, row_info
from microhive.workspace.search import KEYWORD_WEIGHT, check_search, highlight, query_terms, rrf
from microhive.workspace.text import chunk_text, extract_text
from microhive.workspace.vectors import best_rows

__all__ = ["PgIndexMixin"]


class PgIndexMixin:
    """Indexing and search over ``chunks`` (tsvector + real[] vectors)."""

    _pool: Any
    embedder: Embedder

    def _sql(self, text: str) -> str:
        raise NotImplementedError

    async def _event(self, conn: Any, kind: str, info: FileInfo, ctx: CallContext) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- indexing

    async def index_pending(self) -> int:
        done = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                sql = (
                    f"SELECT {COLS} FROM {{s}}.versions v JOIN {{s}}.files f ON "
                    "f.ws=v.ws AND f.path=v.path WHERE v.index_state='pending' ORDER BY v.seq "
                    "LIMIT 16 FOR UPDATE OF v SKIP LOCKED"
                )
                batch = [row_info(r) for r in await conn.fetch(self._sql(sql))]
                if not batch:
                    return done
                for info in batch:
                    await self._index_one(conn, info)
                    done += 1

    async def _index_one(self, conn: Any, info: FileInfo) -> None:
        key = (info.workspace, info.path, info.version)
        current = await conn.fetchrow(
            self._sql("SELECT version, deleted FROM {s}.files WHERE ws=$1 AND path=$2 FOR UPDATE"),
            info.workspace,
            info.path,
        )
        if current is None or current[0] != info.version or current[1]:
            await conn.execute(
                self._sql(
                    "UPDATE {s}.versions SET index_state='superseded' "
                    "WHERE ws=$1 AND path=$2 AND version=$3"
                ),
                *key,
            )
            return
        data = bytes(
            await conn.fetchval(
                self._sql("SELECT data FROM {s}.blobs WHERE sha256=$1"), info.sha256
            )
        )
        try:
            chunks = chunk_text(extract_text(data, info.content_type))
            vectors = (
                await anyio.to_thread.run_sync(self.embedder.embed, chunks)
                if chunks
                else np.zeros((0, 1), np.float32)
            )
        except Exception as exc:  # a bad file must not stop the queue
            await conn.execute(
                self._sql(
                    "UPDATE {s}.versions SET index_state='failed', index_error=$4 WHERE ws=$1 AND "
                    "path=$2 AND version=$3"
                ),
                *key,
                f"{type(exc).__name__}: {exc}"[:500],
            )
            return
        await conn.execute(
            self._sql("DELETE FROM {s}.chunks WHERE ws=$1 AND path=$2"), info.workspace, info.path
        )
        await conn.executemany(
            self._sql(
                "INSERT INTO {s}.chunks (ws, path, version, ordinal, content_type, text, model, "
                "vector) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
            ),
            [
                (*key, i, info.content_type, text, self.embedder.name, vec.tolist())
                for i, (text, vec) in enumerate(zip(chunks, vectors, strict=True))
            ],
        )
        await conn.execute(
            self._sql(
                "UPDATE {s}.versions SET index_state='indexed', "
                "index_error=NULL WHERE ws=$1 AND path=$2 AND version=$3"
            ),
            *key,
        )
        await self._event(conn, "file.indexed", info, CallContext.current())

    # ----------------------------------------------------------------- search

    async def search(
        self,
        ws: str,
        query: str,
        *,
        folder: str | None = None,
        content_types: Sequence[str] | None = None,
        limit: int = 10,
        mode: str = "hybrid",
        grant: Grant = FULL_ACCESS,
        query_vector: NDArray[np.float32] | None = None,
    ) -> builtins.list[SearchHit]:
        ws, folder_ = check_search(ws, folder, query, mode=mode, limit=limit)
        types = tuple(content_types or ())
        terms = query_terms(query)
        where = "ws=$1"
        args: builtins.list[Any] = [ws]
        if folder_:
            args += [len(folder_) + 1, folder_ + "/"]
            where += f" AND left(path, ${len(args) - 1}) = ${len(args)}"
        rows: dict[int, Any] = {}
        keyword: builtins.list[int] = []
        vector: builtins.list[int] = []
        if mode != "vector" and terms:
            tsq = " | ".join(terms)
            sql = (
                f"SELECT id, path, version, ordinal, content_type, text FROM {{s}}.chunks, "
                f"to_tsquery('english', ${len(args) + 1}) q WHERE {where} AND tsv @@ q "
                "ORDER BY ts_rank_cd(tsv, q) DESC, id LIMIT 200"
            )
            for r in await self._pool.fetch(self._sql(sql), *args, tsq):
                if self._keep(r, types, grant):
                    rows[r[0]] = r
                    keyword.append(r[0])
            keyword = keyword[:50]
        if mode != "keyword":
            q = query_vector
            if q is None:
                q = (await anyio.to_thread.run_sync(self.embedder.embed, [query]))[0]
            # Texts are not fetched here (only for the hits, below): a vector
            # query reads every chunk of the workspace.
            sql = (
                f"SELECT id, path, version, ordinal, content_type, NULL, vector FROM "
                f"{{s}}.chunks WHERE {where}"
            )
            found = [
                r
                for r in await self._pool.fetch(self._sql(sql), *args)
                if self._keep(r, types, grant)
            ]
            if found:
                matrix = np.asarray([r[6] for r in found], dtype=np.float32)
                ids = np.asarray([r[0] for r in found], dtype=np.int64)
                scores = matrix @ np.asarray(q, dtype=np.float32)
                for i in best_rows(
                    scores, min(50, len(found)), ids
                ):  # shared with the embedded scan
                    rows.setdefault(found[i][0], found[i])
                    vector.append(found[i][0])
        fused = rrf([keyword, vector], [KEYWORD_WEIGHT, 1.0])
        best = sorted(fused, key=lambda c: (-fused[c], c))[:limit]
        missing = [c for c in best if rows[c][5] is None]
        if missing:
            texts = await self._pool.fetch(
                self._sql("SELECT id, text FROM {s}.chunks WHERE id = ANY($1::bigint[])"), missing
            )
            for cid, text in texts:
                rows[cid] = (*rows[cid][:5], text)
            best = [c for c in best if rows[c][5] is not None]  # deleted meanwhile
        kr = {c: i + 1 for i, c in enumerate(keyword)}
        vr = {c: i + 1 for i, c in enumerate(vector)}
        return [
            SearchHit(
                path=rows[c][1],
                version=rows[c][2],
                chunk=rows[c][3],
                score=round(fused[c], 6),
                snippet=highlight(rows[c][5], terms),
                content_type=rows[c][4],
                keyword_rank=kr.get(c),
                vector_rank=vr.get(c),
            )
            for c in best
        ]

    @staticmethod
    def _keep(row: Any, types: tuple[str, ...], grant: Grant) -> bool:
        return (not types or any(row[4].startswith(t) for t in types)) and grant.allows(row[1])
