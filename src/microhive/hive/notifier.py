"""The hive notifier: tells someone a file was created.

On ``file.created`` it sends one notification through
:class:`microhive.tools.notifier.Notifier` to the operator's sink
(``settings.sink``: a webhook URL, or ``file:PATH``; default
``<state_dir>/hive/notifications.jsonl``). The notification carries the event id
and trace id, so a receiver can drop the rare duplicate of an at-least-once
redelivery.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from microhive.bus import Bus, Delivery
from microhive.hive._base import Reactor, event_file, hive_service

if TYPE_CHECKING:
    from microhive.netpolicy import AddressPolicy
    from microhive.service import Service, ServiceContext
    from microhive.tools.notifier import Notifier

__all__ = ["HiveNotifier", "create_service"]


class HiveNotifier(Reactor):
    subjects = ("file.created",)

    def __init__(
        self, sink: str, *, policy: AddressPolicy | None = None, source: str = "hive-notifier"
    ) -> None:
        super().__init__()
        self.sink = sink
        self.policy = policy
        self.source = source
        self._notifier: Notifier | None = None

    async def open(self, bus: Bus) -> None:
        from microhive.tools.notifier import Notifier

        await super().open(bus)
        self._notifier = Notifier(self.sink, policy=self.policy, source=self.source)

    async def aclose(self) -> None:
        if self._notifier is not None:
            await self._notifier.aclose()

    async def react(self, msg: Delivery) -> dict[str, Any]:
        assert self._notifier is not None
        path = event_file(msg.json())[0]
        receipt = await self._notifier.send(
            f"New file: {path}",
            title=msg.subject,
            data={"path": path, "event_id": msg.msg_id, "trace_id": msg.context.trace_id},
        )
        return {"path": path, "notification": receipt.id}


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``hive-notifier``."""
    from microhive.netpolicy import AddressPolicy

    sink = ctx.spec.settings.get("sink") or f"file:{ctx.state_dir / 'hive' / 'notifications.jsonl'}"
    sink = str(sink)
    if not sink.startswith(("http://", "https://")):
        path = Path(sink.removeprefix("file://").removeprefix("file:")).expanduser()
        if not path.is_absolute() and ctx.config_path is not None:
            path = ctx.config_path.parent / path
        sink = f"file:{path}"
    notifier = HiveNotifier(sink, policy=AddressPolicy.from_mesh(ctx.mesh), source=ctx.name)
    return hive_service(ctx, notifier)
