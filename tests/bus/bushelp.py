"""Helpers for the bus tests: a collecting handler and condition waits (no sleeps)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from microhive.bus import Delivery
from tests.conftest import eventually as eventually  # re-exported for the bus tests


class Collector:
    """A handler that records what it receives and optionally does more with it."""

    def __init__(self, then: Callable[[Delivery], Awaitable[None]] | None = None) -> None:
        self.items: list[dict[str, Any]] = []
        self._then = then

    async def __call__(self, msg: Delivery) -> None:
        self.items.append(
            {
                "subject": msg.subject,
                "data": msg.data,
                "headers": dict(msg.headers),
                "msg_id": msg.msg_id,
                "sequence": msg.sequence,
                "deliveries": msg.deliveries,
                "hops": msg.context.hops,
                "trace_id": msg.context.trace_id,
                "at": time.time(),
            }
        )
        if self._then is not None:
            await self._then(msg)

    def ids(self) -> list[str]:
        return [i["msg_id"] for i in self.items]

    def data(self) -> list[bytes]:
        return [i["data"] for i in self.items]

    async def wait(self, n: int, within: float = 10.0) -> list[dict[str, Any]]:
        await eventually(lambda: len(self.items) >= n, within, f"{n} messages")
        return self.items
