"""What every hive service shares: a reactor (the logic) and a runner (the bus wiring).

A :class:`Reactor` says which subjects it reacts to and what it does with one
event; it knows nothing about processes or HTTP, so tests drive it directly.
A :class:`HiveRunner` subscribes a reactor to the bus as a queue group named
after the service (replicas share the work, each service kind gets every
event), and :func:`hive_service` turns that into a :class:`~microhive.service.Service`
whose readiness is "the bus answers".
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from microhive.bus import Bus, Delivery, Subscription, bus_from_spec, register_bus_metrics
from microhive.errors import InvalidInput, MicrohiveError, ServiceUnavailable

if TYPE_CHECKING:
    from starlette.requests import Request

    from microhive.service import Service, ServiceContext

__all__ = [
    "MAX_TEXT_BYTES",
    "FileSource",
    "HiveRunner",
    "Reactor",
    "event_file",
    "event_text",
    "file_source",
    "hive_service",
]

#: Text larger than this is not read from disk for a file event.
MAX_TEXT_BYTES = 5 * 1024 * 1024


class Reactor(ABC):
    """The logic of one event-driven service."""

    #: Subjects (patterns) this reactor handles.
    subjects: tuple[str, ...] = ("file.created",)

    def __init__(self) -> None:
        self.handled = 0
        self.last_event: dict[str, Any] | None = None

    async def open(self, bus: Bus) -> None:
        """Set up (open stores, sinks); ``bus`` is where follow-up events go."""
        self.bus = bus

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what :meth:`open` acquired."""

    @abstractmethod
    async def react(self, msg: Delivery) -> dict[str, Any]:
        """Handle one event; raise to retry, :class:`InvalidInput` to dead-letter."""

    async def __call__(self, msg: Delivery) -> None:
        outcome = await self.react(msg)
        self.handled += 1
        self.last_event = {"subject": msg.subject, "msg_id": msg.msg_id, "at": time.time(),
                           "trace_id": msg.context.trace_id, **outcome}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return {"handled": self.handled, "last": self.last_event}


class HiveRunner:
    """Subscribes a reactor to the bus as queue group ``group``; an async context manager."""

    def __init__(
        self,
        reactor: Reactor,
        bus: Bus,
        group: str,
        *,
        concurrency: int = 4,
        start: str = "beginning",
        ack_wait: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.bus = bus
        self.group = group
        self.concurrency = concurrency
        self.start_at = start
        self.ack_wait = ack_wait
        self.subscriptions: list[Subscription] = []

    async def start(self) -> None:
        await self.bus.start()
        await self.reactor.open(self.bus)
        subjects = self.reactor.subjects
        for subject in subjects:
            # a queue group follows one pattern: one group per subject when there are several
            group = self.group if len(subjects) == 1 else f"{self.group}-{_slug(subject)}"
            self.subscriptions.append(
                await self.bus.subscribe(
                    subject,
                    self.reactor,
                    queue=group[:64],
                    start=self.start_at,
                    concurrency=self.concurrency,
                    ack_wait=self.ack_wait,
                )
            )

    async def aclose(self) -> None:
        for sub in self.subscriptions:
            await sub.aclose()
        self.subscriptions.clear()
        await self.reactor.aclose()
        await self.bus.aclose()

    async def __aenter__(self) -> HiveRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "subjects": list(self.reactor.subjects),
            "received": sum(s.received for s in self.subscriptions),
            "dead_lettered": sum(s.dead_lettered for s in self.subscriptions),
            **self.reactor.stats(),
        }


def _slug(subject: str) -> str:
    return subject.replace(".", "_").replace("*", "any").replace(">", "all")


def event_file(payload: object) -> tuple[str, str | None, int | None, str | None]:
    """(path, workspace, version, text) of a file event.

    Two shapes are read: the workspace's own events
    (``{"id", "type", "data": {"workspace", "path", "version", ...}}``) and a bare
    ``{"path": ..., "text": ...}`` (what a test or another producer publishes).
    """
    if not isinstance(payload, Mapping):
        raise InvalidInput("file event: expected a JSON object with 'path'")
    data = payload.get("data")
    source: Mapping[str, Any] = data if isinstance(data, Mapping) else payload
    path = source.get("path")
    if not isinstance(path, str) or not path.strip():
        raise InvalidInput("file event: 'path' must be a non-empty string")
    if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
        raise InvalidInput(f"file event: path {path!r} is outside the workspace")
    workspace = source.get("workspace")
    version = source.get("version")
    text = payload.get("text", source.get("text"))
    if text is not None and not isinstance(text, str):
        raise InvalidInput("file event: 'text' must be a string")
    return (
        path,
        workspace if isinstance(workspace, str) else None,
        version if isinstance(version, int) and not isinstance(version, bool) else None,
        text,
    )


def event_text(payload: object, root: Path) -> tuple[str, str]:
    """The (path, text) of a file event: its ``text``, else the file read under ``root``.

    The path must stay inside ``root`` (no ``..``, no absolute paths, no symlink
    escapes); anything else is :class:`InvalidInput`, which dead-letters the event.
    """
    path, _, _, text = event_file(payload)
    if text is not None:
        return path, text
    base = root.resolve()
    target = (base / path).resolve()
    if Path(path).is_absolute() or not target.is_relative_to(base):
        raise InvalidInput(f"file event: path {path!r} is outside the workspace {base}")
    try:
        size = target.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise InvalidInput(f"file event: {path!r} is {size} bytes (limit {MAX_TEXT_BYTES})")
        return path, target.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InvalidInput(f"file event: {path!r} does not exist under {base}") from None


class FileSource:
    """Where a hive service reads the content of a file event from.

    The event's own ``text`` wins. A workspace event (``data.workspace``) is read
    from the workspace service over REST, at the version the event names, when
    ``workspace_url`` is set; anything else from the folder ``root``. Content
    that is not text (a PDF, an image) reads as ``""``.
    """

    def __init__(
        self, root: Path, workspace_url: str | None = None, token: str | None = None
    ) -> None:
        self.root = root
        self.workspace_url = workspace_url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http: httpx.AsyncClient | None = None

    async def read(self, payload: object) -> tuple[str, str]:
        path, workspace, version, text = event_file(payload)
        if text is not None:
            return path, text
        if workspace is None or self.workspace_url is None:
            return await asyncio.to_thread(event_text, payload, self.root)
        if self._http is None:
            self._http = httpx.AsyncClient(headers=self._headers, timeout=30)
        url = f"{self.workspace_url}/v1/ws/{quote(workspace)}/files/{quote(path)}"
        try:
            response = await self._http.get(url, params={"version": version} if version else None)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"cannot read {path!r} from the workspace: {exc}") from exc
        if response.status_code == 404:
            raise InvalidInput(f"file event: {path!r} (version {version}) no longer exists")
        if response.status_code != 200:
            raise ServiceUnavailable(
                f"the workspace answered {response.status_code} for {path!r}; will retry"
            )
        kind = response.headers.get("content-type", "")
        if not (kind.startswith("text/") or "json" in kind or "xml" in kind):
            return path, ""
        if len(response.content) > MAX_TEXT_BYTES:
            raise InvalidInput(f"file event: {path!r} is larger than {MAX_TEXT_BYTES} bytes")
        return path, response.content.decode("utf-8", errors="replace")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def file_source(ctx: ServiceContext) -> FileSource:
    """The mesh's workspace service (if any, and no ``settings.root``) or its folder."""
    root = workspace_root(ctx)
    if ctx.spec.settings.get("root"):
        return FileSource(root)
    from microhive.service import service_url

    try:
        url = service_url(ctx.mesh, kind="workspace", state_dir=ctx.state_dir)
    except MicrohiveError:  # no workspace service (or not reachable by port): the folder
        return FileSource(root)
    return FileSource(root, url, ctx.token)


def workspace_root(ctx: ServiceContext) -> Path:
    """Where file events' relative paths point: ``settings.root``, else the workspace store."""
    raw = ctx.spec.settings.get("root") or ctx.mesh.stores.workspace
    raw = str(raw).removeprefix("file://").removeprefix("file:")
    path = Path(raw).expanduser()
    if not path.is_absolute() and ctx.config_path is not None:
        path = ctx.config_path.parent / path
    return path


def hive_service(ctx: ServiceContext, reactor: Reactor) -> Service:
    """A service running ``reactor`` on the mesh's bus, ready while the bus answers.

    Settings: ``concurrency`` (default 4), ``start`` (``beginning`` | ``new``; where
    a new queue group starts), ``ack_wait`` (seconds).
    """
    from microhive.service import Service

    settings = ctx.spec.settings
    start = str(settings.get("start", "beginning"))
    if start not in ("beginning", "new"):
        raise InvalidInput(f"service {ctx.name!r}: settings.start must be 'beginning' or 'new'")
    runner = HiveRunner(
        reactor,
        bus_from_spec(ctx.mesh.bus),
        group=ctx.name,
        concurrency=int(settings.get("concurrency", 4)),
        start=start,
        ack_wait=float(settings.get("ack_wait", 30.0)),
    )
    service = Service(ctx)
    register_bus_metrics(service.registry, runner.bus)  # backlog of its queue group(s)
    service.on_startup(runner.start)
    service.on_shutdown(runner.aclose)
    service.add_ready_check("bus", runner.bus.ping)

    async def stats(_: Request) -> dict[str, Any]:
        return runner.stats()

    service.add_route("/stats", stats)
    return service
