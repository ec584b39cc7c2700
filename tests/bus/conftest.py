"""Bus test fixtures: a unique, cleaned-up namespace per test on each real server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def drop_nats_namespace(server_url: str, namespace: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(server_url, connect_timeout=2)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(namespace.upper().replace("-", "_"))
    finally:
        await nc.close()


async def drop_redis_namespace(server_url: str, namespace: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(server_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{{{namespace}}}:*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture
def embedded_bus_url(tmp_path: Path) -> str:
    return f"embedded://{tmp_path}/bus"


@pytest.fixture
async def nats_bus_url(nats_url: str) -> AsyncIterator[str]:
    ns = unique()
    yield f"{nats_url}?namespace={ns}"
    await drop_nats_namespace(nats_url, ns)


@pytest.fixture
async def redis_bus_url(redis_url: str) -> AsyncIterator[str]:
    ns = unique()
    yield f"{redis_url}?namespace={ns}"
    await drop_redis_namespace(redis_url, ns)
