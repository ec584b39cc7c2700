"""The workspace on PostgreSQL: content, versions and index in one database.

Same behaviour as the embedded store, checked by the same contract tests:

* content is stored once per SHA-256 in ``blobs`` (``bytea``); ``versions``
  points at it. Writes to one path are serialised with a row lock on ``files``,
  and the expected-version check runs under that lock.
* ``chunks.tsv`` is a stored generated ``tsvector`` with a GIN index; keyword
  search ranks with ``ts_rank_cd``.
* vectors are ``real[]``, scored with numpy for the workspace being searched.
  This needs no extension. With many chunks per workspace, pgvector
  (``vector(384)`` + HNSW) is the next step; it is not installed on the
  machine this was built on, so it is not used.
* the pending-index queue is ``versions.index_state = 'pending'``, claimed with
  ``FOR UPDATE SKIP LOCKED``, so several replicas can share the indexing work.

``?schema=NAME`` in the URL picks the schema (default ``microhive_workspace``);
the tests use one throwaway schema per test.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import time
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from microhive.context import CallContext
from microhive.embeddings import Embedder
from microhive.errors import InvalidInput, MissingDependency
from microhive.workspace.local import DEFAULT_MAX_FILE_BYTES
from microhive.workspace.model import FULL_ACCESS, FileInfo, Grant, Page
from microhive.workspace.paths import clean_path, clean_workspace_name
from microhive.workspace.postgres_index import PgIndexMixin
from microhive.workspace.postgres_schema import COLS, DDL, SCHEMA_NAME, row_info
from microhive.workspace.rules import (
    Listing,
    check_idempotency_key,
    check_move,
    check_path,
    event_record,
    next_version,
    no_file,
    readable,
    replayed,
    too_large,
    write_fingerprint,
)
from microhive.workspace.sql import PostgresPort
from microhive.workspace.text import guess_content_type

__all__ = ["PostgresBackend"]


class PostgresBackend(PgIndexMixin):
    """Workspace files and index in PostgreSQL (asyncpg pool)."""

    def __init__(
        self, url: str, embedder: Embedder, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    ) -> None:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        schema = query.pop("schema", ["microhive_workspace"])[0]
        if not SCHEMA_NAME.match(schema):
            raise InvalidInput(f"invalid schema name {schema!r} in the store URL")
        self.schema = schema
        scheme = "postgresql" if parsed.scheme == "postgres" else parsed.scheme
        self.dsn = urlunparse(parsed._replace(scheme=scheme, query=urlencode(query, doseq=True)))
        self.embedder = embedder
        self.max_file_bytes = max_file_bytes
        self._pool: Any = None
        self.sql: PostgresPort | None = None

    def _sql(self, text: str) -> str:
        return text.replace("{s}", self.schema)

    async def start(self) -> Self:
        try:
            import asyncpg
        except ImportError as exc:
            raise MissingDependency("asyncpg", "postgres", "The PostgreSQL workspace") from exc
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=4, server_settings={"search_path": self.schema}
        )
        self.sql = PostgresPort(self._pool)
        async with self._pool.acquire() as conn:
            await conn.execute(self._sql(DDL))
        return self

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def workspaces(self) -> builtins.list[str]:
        rows = await self._pool.fetch(
            self._sql("SELECT ws FROM {s}.files UNION SELECT ws FROM {s}.folders ORDER BY 1")
        )
        return [r[0] for r in rows]

    async def mkdir(self, ws: str, folder: str, *, grant: Grant = FULL_ACCESS) -> str:
        ws, folder = clean_workspace_name(ws), clean_path(folder.rstrip("/"), what="folder")
        grant.check(folder, write=True)
        await self._pool.execute(
            self._sql(
                "INSERT INTO {s}.folders (ws, path, created_at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING"
            ),
            ws,
            folder,
            time.time(),
        )
        return folder

    # ------------------------------------------------------------------ reads

    async def info(
        self, ws: str, path: str, *, version: int | None = None, grant: Grant = FULL_ACCESS
    ) -> FileInfo:
        ws, path = check_path(ws, path, grant, write=False)
        if version is None:
            sql = (
                f"SELECT {COLS} FROM {{s}}.files f JOIN {{s}}.versions v ON v.ws=f.ws AND "
                "v.path=f.path AND v.version=f.version WHERE f.ws=$1 AND f.path=$2 AND NOT "
                "f.deleted"
            )
            row = await self._pool.fetchrow(self._sql(sql), ws, path)
        else:
            sql = (
                f"SELECT {COLS} FROM {{s}}.versions v JOIN {{s}}.files f ON v.ws=f.ws AND "
                "v.path=f.path WHERE v.ws=$1 AND v.path=$2 AND v.version=$3"
            )
            row = await self._pool.fetchrow(self._sql(sql), ws, path, version)
        if row is None:
            raise no_file(ws, path, version)
        return row_info(row)

    async def read(
        self, ws: str, path: str, *, version: int | None = None, grant: Grant = FULL_ACCESS
    ) -> tuple[FileInfo, bytes]:
        info = readable(await self.info(ws, path, version=version, grant=grant), path)
        data = await self._pool.fetchval(
            self._sql("SELECT data FROM {s}.blobs WHERE sha256=$1"), info.sha256
        )
        return info, bytes(data)

    async def versions(
        self, ws: str, path: str, *, grant: Grant = FULL_ACCESS
    ) -> builtins.list[FileInfo]:
        ws, path = check_path(ws, path, grant, write=False)
        sql = (
            f"SELECT {COLS} FROM {{s}}.versions v JOIN {{s}}.files f ON v.ws=f.ws AND "
            "v.path=f.path WHERE v.ws=$1 AND v.path=$2 ORDER BY v.version"
        )
        rows = await self._pool.fetch(self._sql(sql), ws, path)
        if not rows:
            raise no_file(ws, path)
        return [row_info(r) for r in rows]

    async def list(
        self,
        ws: str,
        folder: str = "",
        *,
        glob: str | None = None,
        recursive: bool = True,
        limit: int = 100,
        cursor: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> Page:
        ws = clean_workspace_name(ws)
        listing = Listing(
            folder, glob=glob, recursive=recursive, limit=limit, cursor=cursor, grant=grant
        )
        prefix = listing.prefix
        sql = (
            f"SELECT {COLS} FROM {{s}}.files f JOIN {{s}}.versions v ON v.ws=f.ws AND "
            "v.path=f.path AND v.version=f.version WHERE f.ws=$1 AND NOT f.deleted AND "
            'f.path COLLATE "C" > $2 AND left(f.path, $3) = $4 ORDER BY f.path COLLATE "C" '
            "LIMIT 500"
        )
        while listing.wants_more:
            rows = await self._pool.fetch(self._sql(sql), ws, listing.last, len(prefix), prefix)
            if not rows:
                break
            listing.add(map(row_info, rows))
        if listing.wants_folders:
            extra = await self._pool.fetch(
                self._sql("SELECT path FROM {s}.folders WHERE ws=$1 AND left(path, $2) = $3"),
                ws,
                len(prefix),
                prefix,
            )
            listing.add_folders(path for (path,) in extra)
        return listing.page()

    # ----------------------------------------------------------------- writes

    async def write(
        self,
        ws: str,
        path: str,
        data: bytes,
        *,
        content_type: str | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        author: str | None = None,
        append: bool = False,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        ws, path = check_path(ws, path, grant, write=True)
        data = bytes(data)
        fingerprint = write_fingerprint(path, data, append=append)
        check_idempotency_key(idempotency_key)
        if len(data) > self.max_file_bytes:
            raise too_large(path, len(data), self.max_file_bytes)
        async with self._pool.acquire() as conn, conn.transaction():
            if idempotency_key is not None:
                # Same-key retries arriving together wait here for the first one.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"{ws}/{idempotency_key}"
                )
                row = await conn.fetchrow(
                    self._sql(
                        "SELECT fingerprint, result FROM {s}.idempotency WHERE ws=$1 AND key=$2"
                    ),
                    ws,
                    idempotency_key,
                )
                if row is not None:
                    return replayed(idempotency_key, row[0], row[1], fingerprint)
            current = await self._lock(conn, ws, path)
            if append and current is not None and not current.deleted:
                old = await conn.fetchval(
                    self._sql("SELECT data FROM {s}.blobs WHERE sha256=$1"), current.sha256
                )
                data = bytes(old) + data
                content_type = content_type or current.content_type
                if len(data) > self.max_file_bytes:
                    raise too_large(path, len(data), self.max_file_bytes, appending=True)
            sha = hashlib.sha256(data).hexdigest()
            await conn.execute(
                self._sql(
                    "INSERT INTO {s}.blobs (sha256, data) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                ),
                sha,
                data,
            )
            info = await self._commit(
                conn,
                ws,
                path,
                current,
                sha=sha,
                size=len(data),
                content_type=content_type or guess_content_type(path, data),
                author=author,
                expected_version=expected_version,
                deleted=False,
            )
            if idempotency_key is not None:
                await conn.execute(
                    self._sql(
                        "INSERT INTO {s}.idempotency (ws, key, fingerprint, result) "
                        "VALUES ($1,$2,$3,$4)"
                    ),
                    ws,
                    idempotency_key,
                    fingerprint,
                    json.dumps(info.to_dict()),
                )
        return info

    async def delete(
        self,
        ws: str,
        path: str,
        *,
        expected_version: int | None = None,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        ws, path = check_path(ws, path, grant, write=True)
        async with self._pool.acquire() as conn, conn.transaction():
            current = await self._lock(conn, ws, path)
            if current is None or current.deleted:
                raise no_file(ws, path)
            return await self._commit(
                conn,
                ws,
                path,
                current,
                sha=current.sha256,
                size=0,
                content_type=current.content_type,
                author=author,
                expected_version=expected_version,
                deleted=True,
            )

    async def restore(
        self,
        ws: str,
        path: str,
        version: int,
        *,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        old, data = await self.read(ws, path, version=version, grant=grant)
        return await self.write(
            ws, path, data, content_type=old.content_type, author=author, grant=grant
        )

    async def copy(
        self,
        ws: str,
        src: str,
        dst: str,
        *,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        info, data = await self.read(ws, src, grant=grant)
        return await self.write(
            ws, dst, data, content_type=info.content_type, author=author, grant=grant
        )

    async def move(
        self,
        ws: str,
        src: str,
        dst: str,
        *,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        ws, src, dst = check_move(ws, src, dst, grant)
        first, second = sorted([src, dst])  # lock in a fixed order: no deadlocks
        async with self._pool.acquire() as conn, conn.transaction():
            locked = {p: await self._lock(conn, ws, p) for p in (first, second)}
            current = locked[src]
            if current is None or current.deleted:
                raise no_file(ws, src)
            info = await self._commit(
                conn,
                ws,
                dst,
                locked[dst],
                sha=current.sha256,
                size=current.size,
                content_type=current.content_type,
                author=author,
                expected_version=None,
                deleted=False,
            )
            await self._commit(
                conn,
                ws,
                src,
                current,
                sha=current.sha256,
                size=0,
                content_type=current.content_type,
                author=author,
                expected_version=None,
                deleted=True,
            )
        return info

    async def _lock(self, conn: Any, ws: str, path: str) -> FileInfo | None:
        """The current version of ``path`` with its ``files`` row locked (or None)."""
        sql = (
            f"SELECT {COLS} FROM {{s}}.files f JOIN {{s}}.versions v ON v.ws=f.ws AND "
            "v.path=f.path AND v.version=f.version WHERE f.ws=$1 AND f.path=$2 "
            "FOR UPDATE OF f"
        )
        row = await conn.fetchrow(self._sql(sql), ws, path)
        return None if row is None else row_info(row)

    async def _commit(
        self,
        conn: Any,
        ws: str,
        path: str,
        current: FileInfo | None,
        *,
        sha: str,
        size: int,
        content_type: str,
        author: str | None,
        expected_version: int | None,
        deleted: bool,
    ) -> FileInfo:
        nxt = next_version(
            path,
            current,
            content_type=content_type,
            deleted=deleted,
            expected_version=expected_version,
        )
        ctx = CallContext.current()
        await conn.execute(
            self._sql(
                "INSERT INTO {s}.versions (ws, path, version, sha256, size, content_type, author, "
                "trace_id, created_at, deleted, index_state) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,"
                "$10,$11)"
            ),
            ws,
            path,
            nxt.version,
            sha,
            size,
            content_type,
            author,
            ctx.trace_id,
            nxt.updated_at,
            deleted,
            nxt.index_state,
        )
        await conn.execute(
            self._sql(
                "INSERT INTO {s}.files (ws, path, version, deleted, created_at, updated_at) "
                "VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (ws, path) DO UPDATE SET "
                "version=EXCLUDED.version, "
                "deleted=EXCLUDED.deleted, created_at=EXCLUDED.created_at, "
                "updated_at=EXCLUDED.updated_at"
            ),
            ws,
            path,
            nxt.version,
            deleted,
            nxt.created_at,
            nxt.updated_at,
        )
        await conn.execute(self._sql("DELETE FROM {s}.chunks WHERE ws=$1 AND path=$2"), ws, path)
        info = FileInfo(
            ws,
            path,
            nxt.version,
            size,
            content_type,
            sha,
            author,
            ctx.trace_id,
            nxt.created_at,
            nxt.updated_at,
            deleted,
            nxt.index_state,
        )
        await self._event(conn, nxt.kind, info, ctx)
        return info

    async def _event(self, conn: Any, kind: str, info: FileInfo, ctx: CallContext) -> None:
        ident = f"{info.workspace}/{info.path}@{info.version}/{kind}"
        event_id = "evt_" + hashlib.sha256(ident.encode()).hexdigest()[:32]
        payload, headers = event_record(event_id, kind, info, ctx)
        await conn.execute(
            self._sql(
                "INSERT INTO {s}.outbox (event_id, type, ws, path, payload, headers, created_at) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING"
            ),
            event_id,
            kind,
            info.workspace,
            info.path,
            payload,
            headers,
            time.time(),
        )
