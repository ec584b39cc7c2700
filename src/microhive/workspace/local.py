"""The embedded workspace store: a local folder of blobs plus one SQLite database.

Why this shape:

* Content is stored by SHA-256 under ``blobs/`` and written to a temporary file,
  fsynced and renamed into place *before* the metadata transaction commits. A
  version row therefore never points at a half-written blob, and a SIGKILL at
  any moment loses no write that was acknowledged.
* Metadata, the index, the event outbox and the webhook delivery log share one
  SQLite file in WAL mode, so a write, its events and its index bookkeeping
  commit together or not at all.
* User paths never become filesystem paths (blobs are named by hash), which
  removes a whole class of escapes; :func:`confine` still guards the paths we
  build.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from microhive.context import CallContext
from microhive.errors import InvalidInput
from microhive.workspace.model import FULL_ACCESS, FileInfo, Grant, Page
from microhive.workspace.paths import clean_path, clean_workspace_name, confine
from microhive.workspace.rules import (
    FILE_COLUMNS,
    Listing,
    check_expected_version,
    check_idempotency_key,
    check_move,
    check_path,
    event_record,
    next_version,
    no_file,
    readable,
    replayed,
    row_to_info,
    too_large,
    write_fingerprint,
)
from microhive.workspace.text import guess_content_type

__all__ = ["DEFAULT_MAX_FILE_BYTES", "LocalStore", "path_from_url"]

DEFAULT_MAX_FILE_BYTES = 25 * 1024 * 1024
_COLUMNS = FILE_COLUMNS


def path_from_url(url: str) -> Path:
    """``file:///abs/dir`` or ``file://./rel`` or a bare path -> a folder path."""
    if "://" not in url:
        return Path(url)
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise InvalidInput(f"not a file:// URL: {url!r}")
    return Path(unquote(parsed.netloc + parsed.path))


class LocalStore:
    """Files, versions, outbox and delivery log of every workspace under one folder.

    Not thread-safe by itself: the service calls it from its event loop thread
    only (embedding, the slow part of indexing, runs elsewhere).
    """

    def __init__(self, root: Path | str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self._blobs = confine(self.root, "blobs")
        self._blobs.mkdir(exist_ok=True)
        self._tmp = confine(self.root, "tmp")
        self._tmp.mkdir(exist_ok=True)
        self.db = sqlite3.connect(
            self.root / "workspace.db", isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        schema = resources.files("microhive.workspace").joinpath("schema.sql").read_text()
        self.db.executescript(schema)
        self._removed_chunks: list[int] = []

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> LocalStore:
        return cls(path_from_url(url), **kwargs)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or rollback on any error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ blobs

    def _blob_path(self, sha: str) -> Path:
        return confine(self._blobs, f"{sha[:2]}/{sha}")

    def _put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self._blob_path(sha)
        if target.exists():
            return sha
        target.parent.mkdir(exist_ok=True)
        tmp = self._tmp / f"{sha}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return sha

    def read_blob(self, sha: str) -> bytes:
        return self._blob_path(sha).read_bytes()

    # ------------------------------------------------------------ workspaces

    def ensure_workspace(self, ws: str) -> str:
        ws = clean_workspace_name(ws)
        self.db.execute(
            "INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)", (ws, time.time())
        )
        return ws

    def workspaces(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM workspaces ORDER BY name")]

    def mkdir(self, ws: str, folder: str, *, grant: Grant = FULL_ACCESS) -> str:
        ws = self.ensure_workspace(ws)
        folder = clean_path(folder.rstrip("/"), what="folder")
        grant.check(folder, write=True)
        self.db.execute(
            "INSERT OR IGNORE INTO folders (ws, path, created_at) VALUES (?, ?, ?)",
            (ws, folder, time.time()),
        )
        return folder

    # ------------------------------------------------------------------ reads

    def info(
        self, ws: str, path: str, *, version: int | None = None, grant: Grant = FULL_ACCESS
    ) -> FileInfo:
        ws, path = check_path(ws, path, grant, write=False)
        if version is None:
            row = self.db.execute(
                f"SELECT {_COLUMNS} FROM files f JOIN versions v ON v.ws=f.ws AND v.path=f.path "
                "AND v.version=f.version WHERE f.ws=? AND f.path=? AND f.deleted=0",
                (ws, path),
            ).fetchone()
        else:
            row = self.db.execute(
                f"SELECT {_COLUMNS} FROM versions v JOIN files f ON v.ws=f.ws AND v.path=f.path "
                "WHERE v.ws=? AND v.path=? AND v.version=?",
                (ws, path, version),
            ).fetchone()
        if row is None:
            raise no_file(ws, path, version)
        return row_to_info(row)

    def read(
        self, ws: str, path: str, *, version: int | None = None, grant: Grant = FULL_ACCESS
    ) -> tuple[FileInfo, bytes]:
        info = readable(self.info(ws, path, version=version, grant=grant), path)
        return info, self.read_blob(info.sha256)

    def versions(self, ws: str, path: str, *, grant: Grant = FULL_ACCESS) -> list[FileInfo]:
        ws, path = check_path(ws, path, grant, write=False)
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM versions v JOIN files f ON v.ws=f.ws AND v.path=f.path "
            "WHERE v.ws=? AND v.path=? ORDER BY v.version",
            (ws, path),
        ).fetchall()
        if not rows:
            raise no_file(ws, path)
        return [row_to_info(r) for r in rows]

    def list(
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
        """Files under ``folder`` in path order, ``limit`` at a time."""
        ws = clean_workspace_name(ws)
        listing = Listing(
            folder, glob=glob, recursive=recursive, limit=limit, cursor=cursor, grant=grant
        )
        prefix = listing.prefix
        while listing.wants_more:
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM files f JOIN versions v ON v.ws=f.ws AND v.path=f.path "
                "AND v.version=f.version WHERE f.ws=? AND f.deleted=0 AND f.path > ? "
                "AND substr(f.path, 1, ?) = ? ORDER BY f.path LIMIT 500",
                (ws, listing.last, len(prefix), prefix),
            ).fetchall()
            if not rows:
                break
            listing.add(map(row_to_info, rows))
        if listing.wants_folders:
            listing.add_folders(
                path
                for (path,) in self.db.execute(
                    "SELECT path FROM folders WHERE ws=? AND substr(path, 1, ?) = ?",
                    (ws, len(prefix), prefix),
                )
            )
        return listing.page()

    # ----------------------------------------------------------------- writes

    def write(
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
        """Write (or append to) a file, making a new version.

        ``expected_version``: the version the caller last saw (``0``: the file must
        not exist). A mismatch raises Conflict and changes nothing.
        ``idempotency_key``: a retried request with the same key returns the first
        result instead of writing again.
        """
        ws = self.ensure_workspace(ws)
        path = clean_path(path)
        grant.check(path, write=True)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput("content must be bytes")
        data = bytes(data)
        fingerprint = write_fingerprint(path, data, append=append)
        replay = self._replay(ws, idempotency_key, fingerprint)
        if replay is not None:
            return replay
        if len(data) > self.max_file_bytes and not append:
            raise too_large(path, len(data), self.max_file_bytes)
        if append:
            current = self._current(ws, path)
            if current is not None and not current.deleted:
                check_expected_version(path, expected_version, current)
                data = self.read_blob(current.sha256) + data
                content_type = content_type or current.content_type
            if len(data) > self.max_file_bytes:
                raise too_large(path, len(data), self.max_file_bytes, appending=True)
        sha = self._put_blob(data)
        ctype = content_type or guess_content_type(path, data)
        with self.transaction():
            info = self._commit_version(
                ws,
                path,
                sha=sha,
                size=len(data),
                content_type=ctype,
                author=author,
                expected_version=expected_version,
                deleted=False,
            )
            self._remember(ws, idempotency_key, fingerprint, info)
        return info

    def delete(
        self,
        ws: str,
        path: str,
        *,
        expected_version: int | None = None,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        """Delete a file (a tombstone version; older versions stay readable)."""
        ws, path = check_path(ws, path, grant, write=True)
        with self.transaction():
            current = self._current(ws, path)
            if current is None or current.deleted:
                raise no_file(ws, path)
            return self._commit_version(
                ws,
                path,
                sha=current.sha256,
                size=0,
                content_type=current.content_type,
                author=author,
                expected_version=expected_version,
                deleted=True,
            )

    def restore(
        self,
        ws: str,
        path: str,
        version: int,
        *,
        author: str | None = None,
        expected_version: int | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        """Make an old version current again (as a new version with its content)."""
        old, data = self.read(ws, path, version=version, grant=grant)
        return self.write(
            ws,
            path,
            data,
            content_type=old.content_type,
            author=author,
            expected_version=expected_version,
            grant=grant,
        )

    def copy(
        self,
        ws: str,
        src: str,
        dst: str,
        *,
        author: str | None = None,
        expected_version: int | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        info, data = self.read(ws, src, grant=grant)
        return self.write(
            ws,
            dst,
            data,
            content_type=info.content_type,
            author=author,
            expected_version=expected_version,
            grant=grant,
        )

    def move(
        self,
        ws: str,
        src: str,
        dst: str,
        *,
        author: str | None = None,
        expected_version: int | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        """Copy to ``dst`` then delete ``src``, in one transaction."""
        ws, src, dst = check_move(ws, src, dst, grant)
        with self.transaction():
            current = self._current(ws, src)
            if current is None or current.deleted:
                raise no_file(ws, src)
            info = self._commit_version(
                ws,
                dst,
                sha=current.sha256,
                size=current.size,
                content_type=current.content_type,
                author=author,
                expected_version=expected_version,
                deleted=False,
            )
            self._commit_version(
                ws,
                src,
                sha=current.sha256,
                size=0,
                content_type=current.content_type,
                author=author,
                expected_version=None,
                deleted=True,
            )
        return info

    # --------------------------------------------------------------- helpers

    def _current(self, ws: str, path: str) -> FileInfo | None:
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM files f JOIN versions v ON v.ws=f.ws AND v.path=f.path "
            "AND v.version=f.version WHERE f.ws=? AND f.path=?",
            (ws, path),
        ).fetchone()
        return None if row is None else row_to_info(row)

    def _commit_version(
        self,
        ws: str,
        path: str,
        *,
        sha: str,
        size: int,
        content_type: str,
        author: str | None,
        expected_version: int | None,
        deleted: bool,
    ) -> FileInfo:
        """Insert the next version row, move the file pointer, queue events (in a txn)."""
        current = self._current(ws, path)
        nxt = next_version(
            path,
            current,
            content_type=content_type,
            deleted=deleted,
            expected_version=expected_version,
        )
        ctx = CallContext.current()
        self.db.execute(
            "INSERT INTO versions (ws, path, version, sha256, size, content_type, author, "
            "trace_id, created_at, deleted, index_state) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                ws,
                path,
                nxt.version,
                sha,
                size,
                content_type,
                author,
                ctx.trace_id,
                nxt.updated_at,
                int(deleted),
                nxt.index_state,
            ),
        )
        self.db.execute(
            "INSERT INTO files (ws, path, version, deleted, created_at, updated_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT (ws, path) DO UPDATE SET version=excluded.version,"
            " deleted=excluded.deleted, created_at=excluded.created_at,"
            " updated_at=excluded.updated_at",
            (ws, path, nxt.version, int(deleted), nxt.created_at, nxt.updated_at),
        )
        # Superseded and deleted content leaves the index at once.
        self._removed_chunks.extend(
            r[0] for r in self.db.execute("SELECT id FROM chunks WHERE ws=? AND path=?", (ws, path))
        )
        self.db.execute("DELETE FROM chunks WHERE ws=? AND path=?", (ws, path))
        info = self._current(ws, path)
        assert info is not None
        self.add_event(nxt.kind, info, ctx)
        return info

    def add_event(self, kind: str, info: FileInfo, ctx: CallContext | None = None) -> None:
        """Queue an event in the outbox (call inside the transaction that caused it)."""
        ctx = ctx or CallContext.current()
        event_id = f"evt_{uuid.uuid4().hex}"
        payload, headers = event_record(event_id, kind, info, ctx)
        self.db.execute(
            "INSERT INTO outbox (event_id, type, ws, path, payload, headers, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                event_id,
                kind,
                info.workspace,
                info.path,
                payload,
                headers,
                time.time(),
            ),
        )

    def _replay(self, ws: str, key: str | None, fingerprint: str) -> FileInfo | None:
        check_idempotency_key(key)
        if key is None:
            return None
        row = self.db.execute(
            "SELECT fingerprint, result FROM idempotency WHERE ws=? AND key=?", (ws, key)
        ).fetchone()
        return None if row is None else replayed(key, row[0], row[1], fingerprint)

    def _remember(self, ws: str, key: str | None, fingerprint: str, info: FileInfo) -> None:
        if key is not None:
            self.db.execute(
                "INSERT INTO idempotency (ws, key, fingerprint, result, created_at) "
                "VALUES (?,?,?,?,?)",
                (ws, key, fingerprint, json.dumps(info.to_dict()), time.time()),
            )

    def take_removed_chunks(self) -> builtins.list[int]:
        """Chunk ids deleted by writes since the last call (the vector matrix drops them)."""
        removed, self._removed_chunks = self._removed_chunks, []
        return removed
