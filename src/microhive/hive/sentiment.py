"""The hive sentiment analyser: scores each new file's text and publishes the result.

On ``file.created`` it runs the offline analyser of :mod:`microhive.tools.sentiment`
and publishes ``file.sentiment`` with the label and scores. The follow-up
event's id is derived from the handled event's, so a redelivery publishes no
second copy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microhive.bus import Delivery
from microhive.hive._base import FileSource, Reactor, file_source, hive_service

if TYPE_CHECKING:
    from microhive.service import Service, ServiceContext

__all__ = ["SentimentAnalyser", "create_service"]


class SentimentAnalyser(Reactor):
    subjects = ("file.created",)

    def __init__(self, files: Path | FileSource) -> None:
        super().__init__()
        self.files = files if isinstance(files, FileSource) else FileSource(files)

    async def aclose(self) -> None:
        await self.files.aclose()

    async def react(self, msg: Delivery) -> dict[str, Any]:
        from microhive.tools.sentiment import analyze

        path, text = await self.files.read(msg.json())
        result = await asyncio.to_thread(analyze, text)
        summary = {"path": path, "label": result.label, "score": result.score}
        await self.bus.publish(
            "file.sentiment",
            {**summary, "positive": result.positive, "negative": result.negative,
             "neutral": result.neutral},
            msg_id=f"sentiment:{msg.msg_id}"[:256],
        )  # fmt: skip
        return summary


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``hive-sentiment``."""
    return hive_service(ctx, SentimentAnalyser(file_source(ctx)))
