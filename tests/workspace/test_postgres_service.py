"""The whole workspace (indexer, events, webhooks) on the real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from microhive.bus import Delivery, open_bus
from microhive.workspace import Workspace

from .wshelp import Receiver, Server, eventually, settings

pytestmark = pytest.mark.services


@pytest.fixture
async def pg_store(postgres_url: str) -> AsyncIterator[str]:
    import asyncpg

    schema = f"ws_svc_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url}?schema={schema}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def test_workspace_on_postgres_indexes_publishes_and_delivers(
    pg_store: str, tmp_path: Path, serve: Callable[..., Awaitable[Server]]
) -> None:
    bus_url = f"embedded://{tmp_path / 'bus'}"
    receiver = Receiver()
    server = await serve(receiver.app())
    events: list[tuple[str, dict[str, Any]]] = []

    async def collect(msg: Delivery) -> None:
        events.append((msg.subject, msg.json()))

    async with open_bus(bus_url) as bus:
        await bus.subscribe("file.*", collect, start="all")
        async with Workspace(settings(tmp_path, store=pg_store, bus=bus_url)) as ws:
            hook, secret = await ws.webhooks.add(server.url + "/hook", ["file.created"])
            await ws.write("r/findings.json", '{"claim": "bees dance to share directions"}')
            await ws.mkdir("empty")
            assert (await ws.list(recursive=False)).folders == ["empty", "r"]

            async def indexed() -> bool:
                return (await ws.info("r/findings.json")).index_state == "indexed"

            await eventually(indexed, what="indexing on PostgreSQL")
            hits = await ws.search("bees dance")
            assert hits[0].path == "r/findings.json"

            async def published() -> bool:
                return {s for s, _ in events} >= {"file.created", "file.indexed"}

            await eventually(published, what="events from the PostgreSQL outbox")

            async def delivered() -> Any:
                return receiver.requests

            got = await eventually(delivered, what="the webhook delivery")
            headers, body = got[0]
            assert Verifier(secret).verify(body, headers)["data"]["path"] == "r/findings.json"
            rows = await ws.webhooks.deliveries(hook.id)
            assert rows[0]["status"] == "delivered"
            assert "default" in await ws.workspaces()
