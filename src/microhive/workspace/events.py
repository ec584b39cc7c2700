"""The outbox relay: events written with the data, published to the bus afterwards.

A write and its ``file.*`` event commit in the same SQLite transaction (the
``outbox`` table). This relay publishes unpublished rows in order, with the
writer's call-context headers and the event id as the bus message id (so a
re-publish after a crash is deduplicated by the bus), and only then marks them
published. An event can be published twice around a crash; it is never lost.

Publishing under the writer's context makes the bus's ``publish file.created``
span a child of the write's span (the REST request or the MCP ``tools/call``),
so every subscriber's ``process`` span is in the writer's trace too.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from microhive.context import CallContext

if TYPE_CHECKING:
    from microhive.bus import Bus
    from microhive.workspace.sql import SqlPort

__all__ = ["OutboxRelay"]

log = logging.getLogger("microhive.workspace.events")


class OutboxRelay:
    """Publishes outbox rows to a bus; ``run`` until cancelled, ``run_once`` in tests."""

    def __init__(self, sql: SqlPort, bus: Bus | None) -> None:
        self.sql = sql
        self.bus = bus
        self._wake = anyio.Event()

    def notify(self) -> None:
        self._wake.set()

    async def unpublished(
        self, limit: int = 100
    ) -> list[tuple[int, str, dict[str, Any], dict[str, str]]]:
        rows = await self.sql.fetch(
            "SELECT id, type, payload, headers FROM outbox WHERE published_at IS NULL "
            "ORDER BY id LIMIT ?",
            limit,
        )
        return [(r[0], r[1], json.loads(r[2]), json.loads(r[3])) for r in rows]

    async def run_once(self) -> int:
        if self.bus is None:
            return 0
        sent = 0
        while rows := await self.unpublished():
            for row_id, kind, payload, headers in rows:
                # Publish under the writer's context, so the trace continues.
                with CallContext.from_headers(headers).activate():
                    await self.bus.publish(kind, payload, msg_id=payload["id"])
                await self.sql.execute(
                    "UPDATE outbox SET published_at=? WHERE id=?", time.time(), row_id
                )
                sent += 1
        return sent

    async def run(self, poll: float = 1.0) -> None:
        backoff = poll
        while True:
            self._wake = anyio.Event()
            try:
                await self.run_once()
                backoff = poll
            except Exception as exc:  # the bus is down: keep the rows, try again later
                log.warning("publishing workspace events failed (will retry): %s", exc)
                backoff = min(backoff * 2, 30.0)
            with anyio.move_on_after(backoff):
                await self._wake.wait()
