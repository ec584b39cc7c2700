"""One interface for the workspace's files and index, whatever engine holds them.

:class:`WorkspaceBackend` is what the contract tests (``tests/workspace/
test_contract.py``) exercise against every backend:

* ``file://`` -- :class:`EmbeddedBackend`: the local folder + SQLite store and
  the FTS5 + numpy index (the service's default);
* ``postgresql://`` -- :class:`~microhive.workspace.postgres.PostgresBackend`:
  content, versions and chunks in PostgreSQL, full-text search with
  ``tsvector``; vectors in ``real[]`` scored with numpy (pgvector is not
  required; see docs/workspace.md).

Backends load lazily by URL scheme; a missing driver fails with its install hint.
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Sequence
from typing import Any, Protocol, Self

import numpy as np
from numpy.typing import NDArray

from microhive.embeddings import Embedder
from microhive.errors import InvalidInput, MissingDependency
from microhive.workspace.index import Indexer, LocalIndex
from microhive.workspace.local import DEFAULT_MAX_FILE_BYTES, LocalStore
from microhive.workspace.model import FULL_ACCESS, FileInfo, Grant, Page, SearchHit
from microhive.workspace.sql import SqlitePort, SqlPort

__all__ = ["BACKENDS", "EmbeddedBackend", "WorkspaceBackend", "open_backend"]

#: URL scheme -> "module:class" (imported on first use).
BACKENDS: dict[str, str] = {
    "file": "microhive.workspace.backend:EmbeddedBackend",
    "postgresql": "microhive.workspace.postgres:PostgresBackend",
    "postgres": "microhive.workspace.postgres:PostgresBackend",
}


class WorkspaceBackend(Protocol):
    """Files with versions plus their search index, and the SQL port for events."""

    #: Where the outbox relay and the webhook log run (valid once started).
    sql: SqlPort

    async def start(self) -> Self: ...
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...
    async def workspaces(self) -> builtins.list[str]: ...
    async def mkdir(self, ws: str, folder: str, *, grant: Grant = FULL_ACCESS) -> str: ...
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
    ) -> FileInfo: ...
    async def read(
        self, ws: str, path: str, *, version: int | None = None, grant: Grant = FULL_ACCESS
    ) -> tuple[FileInfo, bytes]: ...
    async def info(
        self, ws: str, path: str, *, version: int | None = None, grant: Grant = FULL_ACCESS
    ) -> FileInfo: ...
    async def versions(
        self, ws: str, path: str, *, grant: Grant = FULL_ACCESS
    ) -> builtins.list[FileInfo]: ...
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
    ) -> Page: ...
    async def delete(
        self,
        ws: str,
        path: str,
        *,
        expected_version: int | None = None,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo: ...
    async def move(
        self,
        ws: str,
        src: str,
        dst: str,
        *,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo: ...
    async def copy(
        self,
        ws: str,
        src: str,
        dst: str,
        *,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo: ...
    async def restore(
        self,
        ws: str,
        path: str,
        version: int,
        *,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo: ...
    async def index_pending(self) -> int:
        """Index every pending version now; returns how many were processed."""
        ...

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
    ) -> builtins.list[SearchHit]: ...


def open_backend(
    url: str, embedder: Embedder, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> WorkspaceBackend:
    """The backend for a store URL (not started: ``await backend.start()``)."""
    scheme = url.partition("://")[0].lower() if "://" in url else "file"
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise InvalidInput(f"workspace store {url!r}: expected one of {known}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependency(exc.name or module_name, "postgres", f"The {scheme} store") from exc
    cls: Any = getattr(module, cls_name)
    backend: WorkspaceBackend = cls(url, embedder, max_file_bytes=max_file_bytes)
    return backend


class EmbeddedBackend:
    """:class:`LocalStore` + :class:`LocalIndex` behind the async backend interface."""

    def __init__(
        self, url: str, embedder: Embedder, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    ) -> None:
        self.store = LocalStore.from_url(url, max_file_bytes=max_file_bytes)
        self.index = LocalIndex(self.store, embedder)
        self._indexer = Indexer(self.index)
        self.sql: SqlPort = SqlitePort(self.store.db)

    async def start(self) -> Self:
        return self

    async def ping(self) -> None:
        self.store.db.execute("SELECT 1").fetchone()

    async def workspaces(self) -> builtins.list[str]:
        return self.store.workspaces()

    async def mkdir(self, ws: str, folder: str, *, grant: Grant = FULL_ACCESS) -> str:
        return self.store.mkdir(ws, folder, grant=grant)

    async def aclose(self) -> None:
        self.index.close()
        self.store.close()

    async def write(self, ws: str, path: str, data: bytes, **kw: Any) -> FileInfo:
        return self.store.write(ws, path, data, **kw)

    async def read(self, ws: str, path: str, **kw: Any) -> tuple[FileInfo, bytes]:
        return self.store.read(ws, path, **kw)

    async def info(self, ws: str, path: str, **kw: Any) -> FileInfo:
        return self.store.info(ws, path, **kw)

    async def versions(self, ws: str, path: str, **kw: Any) -> builtins.list[FileInfo]:
        return self.store.versions(ws, path, **kw)

    async def list(self, ws: str, folder: str = "", **kw: Any) -> Page:
        return self.store.list(ws, folder, **kw)

    async def delete(self, ws: str, path: str, **kw: Any) -> FileInfo:
        return self.store.delete(ws, path, **kw)

    async def move(self, ws: str, src: str, dst: str, **kw: Any) -> FileInfo:
        return self.store.move(ws, src, dst, **kw)

    async def copy(self, ws: str, src: str, dst: str, **kw: Any) -> FileInfo:
        return self.store.copy(ws, src, dst, **kw)

    async def restore(self, ws: str, path: str, version: int, **kw: Any) -> FileInfo:
        return self.store.restore(ws, path, version, **kw)

    async def index_pending(self) -> int:
        return await self._indexer.run_once()

    async def search(self, ws: str, query: str, **kw: Any) -> builtins.list[SearchHit]:
        return self.index.search(ws, query, **kw)
