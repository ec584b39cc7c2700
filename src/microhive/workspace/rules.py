"""The storage-independent rules both workspace backends apply, written once.

:class:`~microhive.workspace.local.LocalStore` (SQLite) and
:class:`~microhive.workspace.postgres.PostgresBackend` must behave the same (the
contract tests run against both). Everything that does not touch storage lives
here so the two cannot drift: argument checks, the expected-version (ETag) and
idempotency rules, what the next version looks like, the event payload, and
how a listing page is assembled. The backends only fetch and store rows.

This module imports nothing from the backends (``backend.py`` imports
``local.py``), so both can import it without a cycle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from microhive.context import CallContext
from microhive.errors import Conflict, InvalidInput, NotFound
from microhive.workspace.model import FileInfo, FileTooLarge, Grant, IndexState, Page
from microhive.workspace.paths import (
    clean_folder,
    clean_path,
    clean_workspace_name,
    matches_glob,
)
from microhive.workspace.text import is_indexable

__all__ = [
    "FILE_COLUMNS",
    "Listing",
    "NextVersion",
    "check_expected_version",
    "check_idempotency_key",
    "check_move",
    "check_path",
    "decode_cursor",
    "encode_cursor",
    "event_record",
    "next_version",
    "no_file",
    "readable",
    "replayed",
    "row_to_info",
    "too_large",
    "write_fingerprint",
]

#: The columns :func:`row_to_info` reads (``f`` = files, ``v`` = versions).
FILE_COLUMNS = (
    "v.ws, v.path, v.version, v.size, v.content_type, v.sha256, v.author, v.trace_id, "
    "f.created_at, v.created_at, v.deleted, v.index_state, v.index_error"
)


def row_to_info(row: Any) -> FileInfo:
    """A :data:`FILE_COLUMNS` row (SQLite or asyncpg) as a :class:`FileInfo`."""
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


# ------------------------------------------------------------------ checks


def check_path(ws: str, path: str, grant: Grant, *, write: bool) -> tuple[str, str]:
    """Clean ``ws`` and ``path`` and check the grant covers them."""
    ws, path = clean_workspace_name(ws), clean_path(path)
    grant.check(path, write=write)
    return ws, path


def check_move(ws: str, src: str, dst: str, grant: Grant) -> tuple[str, str, str]:
    """Clean and check the arguments of a move (both ends are written)."""
    ws, src, dst = clean_workspace_name(ws), clean_path(src), clean_path(dst)
    grant.check(src, write=True)
    grant.check(dst, write=True)
    if src == dst:
        raise InvalidInput("source and destination are the same path")
    return ws, src, dst


def no_file(ws: str, path: str, version: int | None = None) -> NotFound:
    """The error for a missing file (or a missing version of it)."""
    what = f"version {version} of " if version is not None else ""
    return NotFound(f"no {what}file {path!r} in workspace {ws!r}")


def readable(info: FileInfo, path: str) -> FileInfo:
    """``info`` unless that version is a deletion (which has no content to read)."""
    if info.deleted:
        raise NotFound(f"version {info.version} of {path!r} is a deletion")
    return info


def too_large(path: str, size: int, limit: int, *, appending: bool = False) -> FileTooLarge:
    """The error for content over the workspace's ``max_file_bytes``."""
    if appending:
        return FileTooLarge(
            f"appending would make {path!r} {size} bytes; the workspace limit is {limit}"
        )
    return FileTooLarge(f"{path!r} is {size} bytes; the workspace limit is {limit}")


# ------------------------------------------------------- versions and ETags


def check_expected_version(path: str, expected: int | None, current: FileInfo | None) -> None:
    """Raise Conflict unless the live version is ``expected`` (0: no live file)."""
    if expected is None:
        return
    live = current is not None and not current.deleted
    actual = current.version if live and current is not None else 0
    if actual != expected:
        have = "does not exist" if not actual else f"is at version {actual}"
        raise Conflict(
            f"{path!r} {have}, but the write expected version {expected}; "
            "nothing was changed -- read the current version and retry"
        )


@dataclass(frozen=True)
class NextVersion:
    """What the version a backend is about to store looks like."""

    version: int
    index_state: IndexState
    created_at: float  # of the file: kept while it lives, reset when it comes back
    updated_at: float  # of this version
    kind: str  # the event it causes


def next_version(
    path: str,
    current: FileInfo | None,
    *,
    content_type: str,
    deleted: bool,
    expected_version: int | None,
) -> NextVersion:
    """Check ``expected_version`` against ``current`` and number the next version."""
    check_expected_version(path, expected_version, current)
    live = current is not None and not current.deleted
    now = time.time()
    state: IndexState = "skipped" if deleted or not is_indexable(content_type) else "pending"
    return NextVersion(
        version=(current.version if current else 0) + 1,
        index_state=state,
        created_at=current.created_at if live and current is not None else now,
        updated_at=now,
        kind="file.deleted" if deleted else ("file.updated" if live else "file.created"),
    )


# ------------------------------------------------------------- idempotency


def write_fingerprint(path: str, data: bytes, *, append: bool) -> str:
    """What an idempotency key is bound to: the operation, the path and the bytes."""
    op = "append" if append else "write"
    return hashlib.sha256(f"{op}:{path}:".encode() + data).hexdigest()


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not 0 < len(key) <= 255:
        raise InvalidInput("idempotency key must be 1-255 characters")


def replayed(key: str, stored_fingerprint: str, stored_result: str, fingerprint: str) -> FileInfo:
    """The first result for a retried key; Conflict if the key was used for another request."""
    if stored_fingerprint != fingerprint:
        raise Conflict(f"idempotency key {key!r} was already used for a different request")
    return FileInfo(**json.loads(stored_result))


# ------------------------------------------------------------------ events


def event_record(event_id: str, kind: str, info: FileInfo, ctx: CallContext) -> tuple[str, str]:
    """The outbox ``payload`` and ``headers`` (JSON text) of one event."""
    data = {k: v for k, v in info.to_dict().items() if k != "sha256"}
    payload = {"id": event_id, "type": kind, "timestamp": time.time(), "data": data}
    return json.dumps(payload), json.dumps(ctx.to_headers())


# ---------------------------------------------------------------- listings


def encode_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        return base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid cursor {cursor!r}") from exc


class Listing:
    """One page of a folder listing, assembled from path-ordered current files.

    The backend loops ``while listing.wants_more``: fetch up to N current files
    with ``path > listing.last`` under ``listing.prefix`` (stop when none come
    back) and :meth:`add` them; then, if :attr:`wants_folders`, :meth:`add_folders`
    the explicitly created folders under the prefix; then :meth:`page`.
    """

    def __init__(
        self,
        folder: str,
        *,
        glob: str | None,
        recursive: bool,
        limit: int,
        cursor: str | None,
        grant: Grant,
    ) -> None:
        self.folder = clean_folder(folder)
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000")
        self.last = decode_cursor(cursor) if cursor else ""
        self.prefix = self.folder + "/" if self.folder else ""
        self.glob, self.recursive, self.limit, self.grant = glob, recursive, limit, grant
        self.wants_folders = not recursive and not cursor
        self.items: list[FileInfo] = []
        self.folders: set[str] = set()

    @property
    def wants_more(self) -> bool:
        return len(self.items) <= self.limit

    def add(self, infos: Iterable[FileInfo]) -> None:
        """Take the next files in path order (one more than a page, to know if more follow)."""
        for info in infos:
            self.last = info.path
            rest = info.path[len(self.prefix) :]
            if not self.grant.allows(info.path):
                continue
            if not self.recursive and "/" in rest:
                self.folders.add(self.prefix + rest.split("/", 1)[0])
                continue
            if self.glob and not matches_glob(rest, self.glob):
                continue
            self.items.append(info)
            if len(self.items) > self.limit:
                break

    def add_folders(self, paths: Iterable[str]) -> None:
        """Explicitly created folders under the prefix (non-recursive first page)."""
        for path in paths:
            rest = path[len(self.prefix) :]
            if rest and self.grant.covers_folder(path):
                self.folders.add(self.prefix + rest.split("/", 1)[0])

    def page(self) -> Page:
        items, next_cursor = self.items, None
        if len(items) > self.limit:
            items = items[: self.limit]
            next_cursor = encode_cursor(items[-1].path)
        return Page(items=items, folders=sorted(self.folders), next_cursor=next_cursor)
