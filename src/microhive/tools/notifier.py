"""Deliver a message to one configured sink: a webhook URL or a log file.

The sink is fixed by the operator (the service's settings), never by the caller,
so a model using the ``notify`` tool can choose *what* to say but not *where* it
goes. Two sinks:

* ``http://`` / ``https://`` URL -- the message is POSTed as JSON through a
  :class:`~microhive.netpolicy.SafeHttpClient`, so the SSRF policy applies to the
  webhook too (and to every redirect it answers with). A non-2xx answer is an
  :class:`~microhive.errors.UpstreamError`.
* ``file:PATH`` or a plain path -- the message is appended as one JSON line. The
  file is opened with ``O_APPEND`` and each line written with one ``write`` call,
  so concurrent writers (replicas) never interleave partial lines.

:class:`Notifier` is the plain Python API (the event hive uses it directly);
:func:`create_service` wraps it as an MCP tool service.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict

from microhive.errors import ConfigError, InvalidInput, UpstreamError
from microhive.netpolicy import AddressPolicy, SafeHttpClient

if TYPE_CHECKING:
    from microhive.mcp.server import ToolService
    from microhive.service import Service, ServiceContext

__all__ = [
    "MAX_MESSAGE_CHARS",
    "Delivery",
    "Notification",
    "Notifier",
    "build_service",
    "create_service",
]

MAX_MESSAGE_CHARS = 20_000
Level = Literal["debug", "info", "warning", "error", "critical"]
_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class Notification:
    """What is delivered: the JSON body of the webhook or the log line."""

    id: str
    message: str
    level: str
    title: str | None
    data: dict[str, Any] | None
    source: str | None
    sent_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Delivery(BaseModel):
    """The receipt of one delivered notification."""

    model_config = ConfigDict(frozen=True)

    id: str
    sink: Literal["webhook", "file"]
    target: str
    status_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Notifier:
    """Sends notifications to one sink; owns an HTTP pool for webhook sinks.

    ``sink`` is a URL (webhook) or ``file:PATH`` / a path (JSON-lines log).
    ``policy`` is the outbound address policy (default: public targets only).
    """

    def __init__(
        self,
        sink: str,
        *,
        policy: AddressPolicy | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        if not isinstance(sink, str) or not sink.strip():
            raise ConfigError("notifier: 'sink' must be a webhook URL or a file path")
        self.sink = sink.strip()
        self.source = source
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._client: SafeHttpClient | None = None
        self._path: Path | None = None
        self._lock = anyio.Lock()
        if self.sink.startswith(("http://", "https://")):
            self._client = SafeHttpClient(policy or AddressPolicy(), timeout=timeout)
        else:
            raw = self.sink.removeprefix("file://").removeprefix("file:")
            if not raw:
                raise ConfigError(f"notifier: sink {sink!r} names no file")
            self._path = Path(raw).expanduser()

    @property
    def kind(self) -> Literal["webhook", "file"]:
        return "webhook" if self._client is not None else "file"

    async def __aenter__(self) -> Notifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send(
        self,
        message: str,
        *,
        level: str = "info",
        title: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Delivery:
        """Deliver one message; returns a receipt or raises a microhive error."""
        if not isinstance(message, str) or not message.strip():
            raise InvalidInput("notifier: message must be a non-empty string")
        if len(message) > MAX_MESSAGE_CHARS:
            raise InvalidInput(
                f"notifier: message is {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}"
            )
        if level not in _LEVELS:
            raise InvalidInput(
                f"notifier: level must be one of {', '.join(_LEVELS)}, got {level!r}"
            )
        if data is not None and not isinstance(data, dict):
            raise InvalidInput("notifier: data must be a JSON object")
        note = Notification(
            id=uuid.uuid4().hex,
            message=message,
            level=level,
            title=title,
            data=data,
            source=self.source,
            sent_at=time.time(),
        )
        try:
            body = json.dumps(note.to_dict(), ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"notifier: data is not JSON-serialisable: {exc}") from None
        if self._client is not None:
            return await self._post(note, body)
        return await self._append(note, body)

    async def _post(self, note: Notification, body: str) -> Delivery:
        assert self._client is not None
        headers = {"content-type": "application/json", **self._headers}
        response = await self._client.request(
            "POST", self.sink, headers=headers, content=body.encode(), max_bytes=64 * 1024
        )
        if not 200 <= response.status_code < 300:
            excerpt = response.text()[:200]
            raise UpstreamError(
                f"notifier: webhook {self.sink} answered {response.status_code}: {excerpt}"
            )
        return Delivery(
            id=note.id, sink="webhook", target=self.sink, status_code=response.status_code
        )

    async def _append(self, note: Notification, body: str) -> Delivery:
        assert self._path is not None
        path = self._path
        line = (body + "\n").encode("utf-8")

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, line)
                if written != len(line):  # pragma: no cover - only on a full disk
                    raise OSError(f"short write: {written} of {len(line)} bytes")
            finally:
                os.close(fd)

        async with self._lock:
            try:
                await anyio.to_thread.run_sync(write)
            except OSError as exc:
                raise UpstreamError(f"notifier: cannot append to {path}: {exc}") from exc
        return Delivery(id=note.id, sink="file", target=str(path))


# ------------------------------------------------------------------ tool service


def build_service(notifier: Notifier, name: str = "notifier") -> ToolService:
    """A tool service with one tool, ``notify``, delivering through ``notifier``."""
    from microhive.mcp.server import ToolService

    svc = ToolService(name, description=f"Sends notifications to a {notifier.kind} sink.")

    @svc.tool(read_only=False, idempotent=False, destructive=False, open_world=True)
    async def notify(
        message: str,
        level: Level = "info",
        title: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Delivery:
        """Send a notification to the operator-configured sink (webhook or log file).

        Args:
            message: what to say (at most 20,000 characters)
            level: debug, info, warning, error or critical
            title: an optional short title
            data: optional structured details (a JSON object)
        """
        return await notifier.send(message, level=level, title=title, data=data)

    svc.on_close(notifier.aclose)
    return svc


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``notifier``: ``settings.sink`` is a webhook URL or ``file:PATH``.

    A relative file path is taken from the mesh file's folder; optional
    ``settings.headers`` are sent with every webhook call and
    ``settings.timeout`` bounds it (seconds).
    """
    from microhive.mcp.services import mesh_service

    settings = ctx.spec.settings
    sink = settings.get("sink")
    if not isinstance(sink, str) or not sink:
        raise ConfigError(
            f"service {ctx.name!r} (kind notifier) needs settings.sink: a webhook URL or file:PATH"
        )
    if not sink.startswith(("http://", "https://")):
        raw = sink.removeprefix("file://").removeprefix("file:")
        path = Path(raw).expanduser()
        if not path.is_absolute() and ctx.config_path is not None:
            path = ctx.config_path.parent / path
        sink = f"file:{path}"
    notifier = Notifier(
        sink,
        policy=AddressPolicy.from_mesh(ctx.mesh),
        timeout=float(settings.get("timeout", 10.0)),
        headers=dict(settings.get("headers") or {}),
        source=ctx.name,
    )
    return mesh_service(build_service(notifier, ctx.name), ctx)
