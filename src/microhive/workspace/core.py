"""The workspace as one object: files, index, events and webhooks, with their workers.

:class:`Workspace` is what the REST API, the MCP server and tests use. It owns a
backend (``file://`` embedded or ``postgresql://``, see :mod:`.backend`) and three
background loops (indexer, event relay, webhook delivery), started by ``async
with`` and stopped by ``aclose()``. Every mutating call pokes the loops so work
starts at once; the loops also poll, so work left by a crashed process is
picked up on restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Self

import anyio
import anyio.to_thread

from microhive.embeddings import Embedder, open_embedder
from microhive.errors import InvalidInput, ServiceUnavailable
from microhive.netpolicy import AddressPolicy
from microhive.workspace.backend import WorkspaceBackend, open_backend
from microhive.workspace.events import OutboxRelay
from microhive.workspace.local import DEFAULT_MAX_FILE_BYTES
from microhive.workspace.model import FULL_ACCESS, FileInfo, Grant, Page, SearchHit
from microhive.workspace.webhooks import DEFAULT_SCHEDULE, WebhookDispatcher

__all__ = ["Workspace", "WorkspaceSettings"]

log = logging.getLogger("microhive.workspace")


@dataclass
class WorkspaceSettings:
    """Settings of one workspace service (``services.<name>.settings`` in the mesh file)."""

    store: str = "file://.microhive/workspace"
    embedder: str = "minilm"
    bus: str | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    default_workspace: str = "default"
    webhook_schedule: Sequence[float] = DEFAULT_SCHEDULE
    webhook_timeout: float = 10.0
    allow_private_targets: bool = False
    poll_interval: float = 1.0
    tokens: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorkspaceSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(
                f"unknown workspace settings: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**values)


class Workspace:
    """Files + versions + hybrid search + events + webhooks, on one backend."""

    def __init__(
        self, settings: WorkspaceSettings | None = None, *, embedder: Embedder | None = None
    ) -> None:
        self.settings = settings or WorkspaceSettings()
        self.embedder = embedder or open_embedder(self.settings.embedder)
        self.backend: WorkspaceBackend = open_backend(
            self.settings.store, self.embedder, max_file_bytes=self.settings.max_file_bytes
        )
        self.policy = AddressPolicy(allow_private=self.settings.allow_private_targets)
        self._webhooks: WebhookDispatcher | None = None
        self._relay: OutboxRelay | None = None
        self._stack = AsyncExitStack()
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._index_wake = anyio.Event()

    @property
    def webhooks(self) -> WebhookDispatcher:
        if self._webhooks is None:
            raise ServiceUnavailable("the workspace is not started")
        return self._webhooks

    @property
    def relay(self) -> OutboxRelay:
        if self._relay is None:
            raise ServiceUnavailable("the workspace is not started")
        return self._relay

    async def start(self, *, background: bool = True) -> Self:
        """Open the backend and the bus, start the loops (``background=False``: none)."""
        await self.backend.start()
        self._stack.push_async_callback(self.backend.aclose)
        self._webhooks = WebhookDispatcher(
            self.backend.sql,
            policy=self.policy,
            schedule=self.settings.webhook_schedule,
            timeout=self.settings.webhook_timeout,
        )
        self._stack.push_async_callback(self._webhooks.aclose)
        self._relay = OutboxRelay(self.backend.sql, None)
        if self.settings.bus:
            from microhive.bus import open_bus

            self._relay.bus = await self._stack.enter_async_context(open_bus(self.settings.bus))
        if background:
            # Plain tasks, not a task group: start() and aclose() may run in
            # different tasks (test fixtures, some lifespans).
            poll = self.settings.poll_interval
            for loop in (self._index_loop, self._relay.run, self._webhooks.run):
                self._tasks.append(asyncio.create_task(loop(poll), name=loop.__qualname__))
        return self

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _index_loop(self, poll: float) -> None:
        """Drain the durable pending-index queue; woken by writes, else polling."""
        while True:
            self._index_wake = anyio.Event()
            try:
                await self.backend.index_pending()
            except Exception as exc:  # the database is down: keep the queue, retry
                log.warning("indexing failed (will retry): %s", exc)
            with anyio.move_on_after(poll):
                await self._index_wake.wait()

    async def ping(self) -> None:
        """Raise unless the backend answers (the service's readiness check)."""
        await self.backend.ping()

    def _changed(self) -> None:
        self._index_wake.set()
        if self._relay is not None:
            self._relay.notify()
        if self._webhooks is not None:
            self._webhooks.notify()

    def ws(self, name: str | None) -> str:
        return name or self.settings.default_workspace

    # ----------------------------------------------------------------- files

    async def write(
        self,
        path: str,
        data: bytes | str,
        *,
        workspace: str | None = None,
        content_type: str | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        author: str | None = None,
        append: bool = False,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        info = await self.backend.write(
            self.ws(workspace),
            path,
            raw,
            content_type=content_type,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            author=author,
            append=append,
            grant=grant,
        )
        self._changed()
        return info

    async def read(
        self,
        path: str,
        *,
        workspace: str | None = None,
        version: int | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> tuple[FileInfo, bytes]:
        return await self.backend.read(self.ws(workspace), path, version=version, grant=grant)

    async def info(
        self,
        path: str,
        *,
        workspace: str | None = None,
        version: int | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        return await self.backend.info(self.ws(workspace), path, version=version, grant=grant)

    async def versions(
        self, path: str, *, workspace: str | None = None, grant: Grant = FULL_ACCESS
    ) -> builtins.list[FileInfo]:
        return await self.backend.versions(self.ws(workspace), path, grant=grant)

    async def list(
        self,
        folder: str = "",
        *,
        workspace: str | None = None,
        glob: str | None = None,
        recursive: bool = True,
        limit: int = 100,
        cursor: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> Page:
        return await self.backend.list(
            self.ws(workspace),
            folder,
            glob=glob,
            recursive=recursive,
            limit=limit,
            cursor=cursor,
            grant=grant,
        )

    async def delete(
        self,
        path: str,
        *,
        workspace: str | None = None,
        expected_version: int | None = None,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        info = await self.backend.delete(
            self.ws(workspace),
            path,
            expected_version=expected_version,
            author=author,
            grant=grant,
        )
        self._changed()
        return info

    async def restore(
        self,
        path: str,
        version: int,
        *,
        workspace: str | None = None,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        info = await self.backend.restore(
            self.ws(workspace), path, version, author=author, grant=grant
        )
        self._changed()
        return info

    async def move(
        self,
        src: str,
        dst: str,
        *,
        workspace: str | None = None,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        info = await self.backend.move(self.ws(workspace), src, dst, author=author, grant=grant)
        self._changed()
        return info

    async def copy(
        self,
        src: str,
        dst: str,
        *,
        workspace: str | None = None,
        author: str | None = None,
        grant: Grant = FULL_ACCESS,
    ) -> FileInfo:
        info = await self.backend.copy(self.ws(workspace), src, dst, author=author, grant=grant)
        self._changed()
        return info

    async def mkdir(
        self, folder: str, *, workspace: str | None = None, grant: Grant = FULL_ACCESS
    ) -> str:
        return await self.backend.mkdir(self.ws(workspace), folder, grant=grant)

    async def workspaces(self) -> builtins.list[str]:
        return await self.backend.workspaces()

    # ---------------------------------------------------------------- search

    async def search(
        self,
        query: str,
        *,
        workspace: str | None = None,
        folder: str | None = None,
        content_types: Sequence[str] | None = None,
        limit: int = 10,
        mode: str = "hybrid",
        grant: Grant = FULL_ACCESS,
    ) -> builtins.list[SearchHit]:
        vector = None
        if mode in ("hybrid", "vector") and query.strip():
            # The query embedding is CPU work: keep it off the event loop.
            vector = (await anyio.to_thread.run_sync(self.embedder.embed, [query]))[0]
        return await self.backend.search(
            self.ws(workspace),
            query,
            folder=folder,
            content_types=content_types,
            limit=limit,
            mode=mode,
            grant=grant,
            query_vector=vector,
        )
