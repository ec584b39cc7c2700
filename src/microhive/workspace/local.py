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

import base64
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
from microhive.errors import Conflict, InvalidInput, NotFound
from microhive.workspace.model import FULL_ACCESS, FileInfo, FileTooLarge, Grant, Page
from microhive.workspace.paths import (
    clean_folder,
    clean_path,
    clean_workspace_name,
    confine,
    matches_glob,
)
from microhive.workspace.text import guess_content_type, is_indexable

__all__ = ["DEFAULT_MAX_FILE_BYTES", "LocalStore", "path_from_url"]

DEFAULT_MAX_FILE_BYTES = 25 * 1024 * 1024
_COLUMNS = (
    "v.ws, v.path, v.version, v.size, v.content_type, v.sha256, v.author, v.trace_id, "
    "f.created_at, v.created_at, v.deleted, v.index_state, v.index_error"
)


def path_from_url(url: str) -> Path:
    """``file:///abs/dir`` or ``file://./rel`` or a bare path -> a folder path."""
    if "://" not in url:
        return Path(url)
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise InvalidInput(f"not a file:// URL: {url!r}")
    return Path(unquote(parsed.netloc + parsed.path))


def _row_to_info(row: sqlite3.Row | tuple[Any, ...]) -> FileInfo:
    return FileInfo(
        workspace=row[0],
        path=row[1],
        version=row[2],
        size=row[3],
        content_type=row[4],
        sha256=row[5],
        author=row[6],
        trace_id=row[7],
        created_at=row[8],
        updated_at=row[9],
        deleted=bool(row[10]),
        index_state=row[11],
        index_error=row[12],
    )


def _encode_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid cursor {cursor!r}") from exc


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
        ws = clean_workspace_name(ws)
        path = clean_path(path)
        grant.check(path, write=False)
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
            what = f"version {version} of " if version is not None else ""
            raise NotFound(f"no {what}file {path!r} in workspace {ws!r}")
        return _row_to_info(row)

    def read(
        self, ws: str, path: str, *, version: int | None = None, grant: Grant = FULL_ACCESS
    ) -> tuple[FileInfo, bytes]:
        info = self.info(ws, path, version=version, grant=grant)
        if info.deleted:
            raise NotFound(f"version {info.version} of {path!r} is a deletion")
        return info, self.read_blob(info.sha256)

    def versions(self, ws: str, path: str, *, grant: Grant = FULL_ACCESS) -> list[FileInfo]:
        ws = clean_workspace_name(ws)
        path = clean_path(path)
        grant.check(path, write=False)
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM versions v JOIN files f ON v.ws=f.ws AND v.path=f.path "
            "WHERE v.ws=? AND v.path=? ORDER BY v.version",
            (ws, path),
        ).fetchall()
        if not rows:
            raise NotFound(f"no file {path!r} in workspace {ws!r}")
        return [_row_to_info(r) for r in rows]

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
        folder = clean_folder(folder)
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000")
        after = _decode_cursor(cursor) if cursor else ""
        prefix = folder + "/" if folder else ""
        items: list[FileInfo] = []
        folders: set[str] = set()
        last = after
        while len(items) <= limit:
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM files f JOIN versions v ON v.ws=f.ws AND v.path=f.path "
                "AND v.version=f.version WHERE f.ws=? AND f.deleted=0 AND f.path > ? "
                "AND substr(f.path, 1, ?) = ? ORDER BY f.path LIMIT 500",
                (ws, last, len(prefix), prefix),
            ).fetchall()
            if not rows:
                break
            for row in rows:
                info = _row_to_info(row)
                last = info.path
                rest = info.path[len(prefix) :]
                if not grant.allows(info.path):
                    continue
                if not recursive and "/" in rest:
                    folders.add(prefix + rest.split("/", 1)[0])
                    continue
                if glob and not matches_glob(rest, glob):
                    continue
                items.append(info)
                if len(items) > limit:
                    break
        if not recursive and not cursor:
            for (path,) in self.db.execute(
                "SELECT path FROM folders WHERE ws=? AND substr(path, 1, ?) = ?",
                (ws, len(prefix), prefix),
            ):
                rest = path[len(prefix) :]
                if rest and grant.covers_folder(path):
                    folders.add(prefix + rest.split("/", 1)[0])
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = _encode_cursor(items[-1].path)
        return Page(items=items, folders=sorted(folders), next_cursor=next_cursor)

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
        fingerprint = hashlib.sha256(
            f"{'append' if append else 'write'}:{path}:".encode() + data
        ).hexdigest()
        replay = self._replay(ws, idempotency_key, fingerprint)
        if replay is not None:
            return replay
        if len(data) > self.max_file_bytes and not append:
            raise FileTooLarge(
                f"{path!r} is {len(data)} bytes; the workspace limit is {self.max_file_bytes}"
            )
        if append:
            current = self._current(ws, path)
            if current is not None and not current.deleted:
                if expected_version is not None and current.version != expected_version:
                    raise self._conflict(path, expected_version, current.version)
                data = self.read_blob(current.sha256) + data
                content_type = content_type or current.content_type
            if len(data) > self.max_file_bytes:
                raise FileTooLarge(
                    f"appending would make {path!r} {len(data)} bytes; "
                    f"the workspace limit is {self.max_file_bytes}"
                )
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
        ws = clean_workspace_name(ws)
        path = clean_path(path)
        grant.check(path, write=True)
        with self.transaction():
            current = self._current(ws, path)
            if current is None or current.deleted:
                raise NotFound(f"no file {path!r} in workspace {ws!r}")
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
        ws = clean_workspace_name(ws)
        src, dst = clean_path(src), clean_path(dst)
        grant.check(src, write=True)
        grant.check(dst, write=True)
        if src == dst:
            raise InvalidInput("source and destination are the same path")
        with self.transaction():
            current = self._current(ws, src)
            if current is None or current.deleted:
                raise NotFound(f"no file {src!r} in workspace {ws!r}")
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
        return None if row is None else _row_to_info(row)

    @staticmethod
    def _conflict(path: str, expected: int, actual: int | None) -> Conflict:
        have = "does not exist" if not actual else f"is at version {actual}"
        return Conflict(
            f"{path!r} {have}, but the write expected version {expected}; "
            "nothing was changed -- read the current version and retry"
        )

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
        now = time.time()
        current = self._current(ws, path)
        live = current is not None and not current.deleted
        if expected_version is not None:
            actual = current.version if live and current is not None else 0
            if actual != expected_version:
                raise self._conflict(path, expected_version, actual or None)
        version = (current.version if current else 0) + 1
        ctx = CallContext.current()
        state = "skipped" if deleted or not is_indexable(content_type) else "pending"
        self.db.execute(
            "INSERT INTO versions (ws, path, version, sha256, size, content_type, author, "
            "trace_id, created_at, deleted, index_state) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                ws,
                path,
                version,
                sha,
                size,
                content_type,
                author,
                ctx.trace_id,
                now,
                int(deleted),
                state,
            ),
        )
        created_at = current.created_at if live and current is not None else now
        self.db.execute(
            "INSERT INTO files (ws, path, version, deleted, created_at, updated_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT (ws, path) DO UPDATE SET version=excluded.version,"
            " deleted=excluded.deleted, created_at=excluded.created_at,"
            " updated_at=excluded.updated_at",
            (ws, path, version, int(deleted), created_at, now),
        )
        # Superseded and deleted content leaves the index at once.
        self._removed_chunks.extend(
            r[0] for r in self.db.execute("SELECT id FROM chunks WHERE ws=? AND path=?", (ws, path))
        )
        self.db.execute("DELETE FROM chunks WHERE ws=? AND path=?", (ws, path))
        info = self._current(ws, path)
        assert info is not None
        kind = "file.deleted" if deleted else ("file.updated" if live else "file.created")
        self.add_event(kind, info, ctx)
        return info

    def add_event(self, kind: str, info: FileInfo, ctx: CallContext | None = None) -> None:
        """Queue an event in the outbox (call inside the transaction that caused it)."""
        ctx = ctx or CallContext.current()
        event_id = f"evt_{uuid.uuid4().hex}"
        data = {k: v for k, v in info.to_dict().items() if k not in {"sha256"}}
        payload = {"id": event_id, "type": kind, "timestamp": time.time(), "data": data}
        self.db.execute(
            "INSERT INTO outbox (event_id, type, ws, path, payload, headers, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                event_id,
                kind,
                info.workspace,
                info.path,
                json.dumps(payload),
                json.dumps(ctx.to_headers()),
                time.time(),
            ),
        )

    def _replay(self, ws: str, key: str | None, fingerprint: str) -> FileInfo | None:
        if key is None:
            return None
        if not key or len(key) > 255:
            raise InvalidInput("idempotency key must be 1-255 characters")
        row = self.db.execute(
            "SELECT fingerprint, result FROM idempotency WHERE ws=? AND key=?", (ws, key)
        ).fetchone()
        if row is None:
            return None
        if row[0] != fingerprint:
            raise Conflict(f"idempotency key {key!r} was already used for a different request")
        return FileInfo(**json.loads(row[1]))

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
