"""Standard Webhooks out: verified signatures, retries until delivered, 410, SSRF."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from microhive.errors import InvalidInput, TargetRefused
from microhive.workspace import Workspace
from tests.conftest import free_port

from .wshelp import Receiver, Server, eventually, settings

Serve = Callable[..., Awaitable[Server]]


async def _deliveries(ws: Workspace, hook_id: str) -> list[dict[str, Any]]:
    return await ws.webhooks.deliveries(hook_id)


async def test_signed_deliveries_verify_with_standardwebhooks(ws: Workspace, serve: Serve) -> None:
    receiver = Receiver()
    server = await serve(receiver.app())
    hook, secret = await ws.webhooks.add(server.url + "/hook", ["file.created"], folder="reports")
    assert secret.startswith("whsec_")
    assert "secret" not in hook.to_dict()
    await ws.write("reports/r.md", "report")
    await ws.write("other/o.md", "not subscribed (folder)")
    await ws.write("reports/r.md", "an update (not subscribed: type)")
    await eventually(lambda: _async(len(receiver.requests) >= 1), what="a delivery")
    headers, body = receiver.requests[0]
    payload = Verifier(secret).verify(body, headers)
    assert payload["type"] == "file.created"
    assert payload["data"]["path"] == "reports/r.md"
    assert headers["webhook-id"] == payload["id"]
    # Rotation: the new secret verifies, and so does the old one during the grace period.
    new_secret = await ws.webhooks.rotate(hook.id)
    await ws.write("reports/r2.md", "second report")
    await eventually(lambda: _async(len(receiver.requests) >= 2), what="a second delivery")
    headers2, body2 = receiver.requests[1]
    Verifier(new_secret).verify(body2, headers2)
    Verifier(secret).verify(body2, headers2)
    assert len(receiver.requests) == 2


async def _async(value: object) -> object:
    return value


async def test_a_receiver_down_for_a_while_gets_every_delivery(ws: Workspace, serve: Serve) -> None:
    port = free_port()
    hook, secret = await ws.webhooks.add(f"http://127.0.0.1:{port}/hook", ["file.*"])
    for i in range(3):
        await ws.write(f"n{i}.txt", f"note {i}")

    async def retried() -> bool:
        rows = await _deliveries(ws, hook.id)
        return len(rows) >= 3 and all(r["attempts"] >= 2 for r in rows[:3])

    await eventually(retried, what="deliveries to fail and be retried")
    receiver = Receiver()
    await serve(receiver.app(), port)

    async def all_in() -> bool:
        rows = await _deliveries(ws, hook.id)
        return bool(rows) and all(r["status"] == "delivered" for r in rows)

    await eventually(all_in, within=20, what="every delivery once the receiver is back")
    ids = {h["webhook-id"] for h, _ in receiver.requests}
    assert len(ids) == len(await _deliveries(ws, hook.id)) >= 3
    for headers, body in receiver.requests:
        Verifier(secret).verify(body, headers)


async def test_410_disables_and_retry_after_is_honoured(ws: Workspace, serve: Serve) -> None:
    receiver = Receiver()
    receiver.status, receiver.headers = 503, {"retry-after": "3600"}
    server = await serve(receiver.app())
    hook, _ = await ws.webhooks.add(server.url + "/hook")
    await ws.write("a.txt", "x")
    await eventually(lambda: _async(receiver.requests), what="the first attempt")
    row = await eventually(lambda: _attempted(ws, hook.id), what="retry scheduled")
    import time

    assert row["next_at"] - time.time() > 3000  # an hour away, not the 0.05 s schedule
    receiver.status, receiver.headers = 410, {}
    await ws.webhooks.redeliver(row["id"])

    async def disabled() -> bool:
        return not (await ws.webhooks.get(hook.id)).enabled

    await eventually(disabled, what="410 to disable the endpoint")
    assert "410" in ((await ws.webhooks.get(hook.id)).disabled_reason or "")


async def _attempted(ws: Workspace, hook_id: str) -> dict[str, Any] | None:
    rows = [r for r in await ws.webhooks.deliveries(hook_id) if r["attempts"] >= 1]
    return rows[0] if rows else None


async def test_redirects_are_not_followed(ws: Workspace, serve: Serve) -> None:
    target = Receiver()
    target_server = await serve(target.app())
    bouncer = Receiver()
    bouncer.status, bouncer.headers = 307, {"location": target_server.url + "/hook"}
    bouncer_server = await serve(bouncer.app())
    hook, _ = await ws.webhooks.add(bouncer_server.url + "/hook")
    await ws.write("a.txt", "x")
    attempt = await eventually(lambda: _attempted(ws, hook.id), what="an attempt")
    assert target.requests == []
    assert attempt["last_status"] == 307


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "ftp://example.com/hook",
    ],
)
async def test_private_targets_are_refused_by_default(tmp_path: Path, url: str) -> None:
    async with Workspace(settings(tmp_path, allow_private_targets=False)) as ws:
        expected = TargetRefused if url.startswith("http") else InvalidInput
        with pytest.raises(expected):
            await ws.webhooks.add(url)
        assert await ws.webhooks.subscriptions() == []
