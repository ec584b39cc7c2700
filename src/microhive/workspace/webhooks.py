"""Outbound webhooks following the Standard Webhooks specification.

* Subscriptions pick event types (``file.*`` or exact) and a folder.
* Each delivery is signed: ``webhook-id`` (the event id, stable across retries),
  ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
  "id.timestamp.body">`` with the endpoint's ``whsec_`` secret. The secret is
  returned once, when the subscription is created or rotated; during a rotation
  the old secret keeps signing too (two signatures) for a grace period.
* The delivery log is a table: fan-out from the event outbox and every attempt
  are committed, so a restart resumes exactly the deliveries still pending.
* Retries follow a schedule (default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h)
  with +-20 % jitter; a ``Retry-After`` answer is honoured (capped at 24 h);
  ``410 Gone`` disables the endpoint.
* Targets are checked by :mod:`microhive.netpolicy` at connect time (private,
  loopback, link-local and metadata addresses refused unless allowed) and
  redirects are never followed.
* Each attempt is a ``POST`` client span in the trace of the write that caused
  the event: the outbox row keeps the writer's ``traceparent``, so a retry hours
  later still lands in that trace, and the receiver gets the span's
  ``traceparent`` header to continue it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from opentelemetry import context as otel_context
from opentelemetry.trace import Status, StatusCode

from microhive.errors import InvalidInput, NotFound
from microhive.netpolicy import AddressPolicy, policy_transport
from microhive.tracing import client_span, creation_context
from microhive.workspace.model import EVENT_TYPES
from microhive.workspace.paths import clean_folder, in_folder

if TYPE_CHECKING:
    from microhive.workspace.sql import SqlPort

__all__ = ["DEFAULT_SCHEDULE", "Webhook", "WebhookDispatcher", "sign"]

log = logging.getLogger("microhive.workspace.webhooks")

#: Seconds to wait before retry 1, 2, ... (about 28 hours in all).
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
_MAX_RETRY_AFTER = 86400.0


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one delivery."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class Webhook:
    """A subscription (without its secret: that is shown once, at creation/rotation)."""

    id: str
    url: str
    events: list[str]
    folder: str
    workspace: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: float

    def wants(self, kind: str, ws: str, path: str) -> bool:
        ok_type = any(
            e == kind or (e.endswith(".*") and kind.startswith(e[:-1])) for e in self.events
        )
        return (
            self.enabled
            and ok_type
            and (self.workspace is None or self.workspace == ws)
            and in_folder(path, self.folder)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        return min(
            max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), _MAX_RETRY_AFTER
        )
    except (TypeError, ValueError):
        return None


def _writer_trace(headers: str | None) -> otel_context.Context | None:
    """The trace context of the write behind an event (its outbox headers), if any."""
    if not headers:
        return None
    try:
        carrier = json.loads(headers)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    return creation_context({k: v for k, v in carrier.items() if isinstance(v, str)})


class WebhookDispatcher:
    """Subscriptions, fan-out from the outbox, and the delivery loop."""

    def __init__(
        self,
        sql: SqlPort,
        *,
        policy: AddressPolicy | None = None,
        schedule: Sequence[float] = DEFAULT_SCHEDULE,
        timeout: float = 10.0,
        jitter: float = 0.2,
        rotation_grace: float = 86400.0,
    ) -> None:
        self.sql = sql
        self.policy = policy or AddressPolicy()
        self.schedule = tuple(float(s) for s in schedule)
        self.jitter = jitter
        self.rotation_grace = rotation_grace
        self._client = httpx.AsyncClient(
            transport=policy_transport(self.policy),
            trust_env=False,
            follow_redirects=False,
            timeout=timeout,
            headers={"user-agent": "microhive-webhooks"},
        )
        self._wake = anyio.Event()

    async def aclose(self) -> None:
        await self._client.aclose()

    def notify(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------- subscriptions

    async def add(
        self,
        url: str,
        events: Sequence[str] = ("file.*",),
        *,
        folder: str = "",
        workspace: str | None = None,
    ) -> tuple[Webhook, str]:
        """Create a subscription; returns it and its secret (shown only now)."""
        await self.policy.check_url(url)
        if not events:
            raise InvalidInput("a webhook needs at least one event type")
        for e in events:
            if e not in EVENT_TYPES and e not in ("file.*", "*"):
                raise InvalidInput(
                    f"unknown event type {e!r}; use one of {', '.join(EVENT_TYPES)} or file.*"
                )
        folder = clean_folder(folder)
        hook_id = f"wh_{uuid.uuid4().hex[:16]}"
        secret = _new_secret()
        events_ = ["file.*" if e == "*" else e for e in events]
        await self.sql.execute(
            "INSERT INTO webhooks (id, url, events, folder, ws, secret, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            hook_id,
            url,
            json.dumps(events_),
            folder,
            workspace,
            secret,
            time.time(),
        )
        return await self.get(hook_id), secret

    async def get(self, hook_id: str) -> Webhook:
        rows = await self.sql.fetch(
            "SELECT id, url, events, folder, ws, enabled, disabled_reason, created_at "
            "FROM webhooks WHERE id=?",
            hook_id,
        )
        if not rows:
            raise NotFound(f"no webhook {hook_id!r}")
        r = rows[0]
        return Webhook(r[0], r[1], json.loads(r[2]), r[3], r[4], bool(r[5]), r[6], r[7])

    async def subscriptions(self) -> list[Webhook]:
        rows = await self.sql.fetch("SELECT id FROM webhooks ORDER BY created_at, id")
        return [await self.get(r[0]) for r in rows]

    async def remove(self, hook_id: str) -> None:
        await self.get(hook_id)
        async with self.sql.transaction() as tx:
            await tx.execute("DELETE FROM webhooks WHERE id=?", hook_id)
            await tx.execute(
                "DELETE FROM deliveries WHERE webhook_id=? AND status='pending'", hook_id
            )

    async def rotate(self, hook_id: str) -> str:
        """New secret (returned once); the old one keeps signing for the grace period."""
        await self.get(hook_id)
        secret = _new_secret()
        await self.sql.execute(
            "UPDATE webhooks SET old_secret=secret, old_secret_until=?, secret=? WHERE id=?",
            time.time() + self.rotation_grace,
            secret,
            hook_id,
        )
        return secret

    async def enable(self, hook_id: str) -> None:
        await self.get(hook_id)
        await self.sql.execute(
            "UPDATE webhooks SET enabled=1, disabled_reason=NULL WHERE id=?", hook_id
        )

    async def deliveries(
        self, hook_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, webhook_id, event_id, attempts, next_at, status, last_status, "
            "last_error FROM deliveries"
        )
        args: list[Any] = []
        if hook_id:
            sql += " WHERE webhook_id=?"
            args.append(hook_id)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        keys = (
            "id",
            "webhook_id",
            "event_id",
            "attempts",
            "next_at",
            "status",
            "last_status",
            "last_error",
        )
        return [dict(zip(keys, r, strict=True)) for r in await self.sql.fetch(sql, *args)]

    async def redeliver(self, delivery_id: int) -> None:
        """Queue a delivery again now (after a fix on the receiving side)."""
        changed = await self.sql.execute(
            "UPDATE deliveries SET status='pending', next_at=?, attempts=0 WHERE id=?",
            time.time(),
            delivery_id,
        )
        if changed == 0:
            raise NotFound(f"no delivery {delivery_id}")
        self.notify()

    async def test(self, hook_id: str) -> int:
        """Queue a ``webhook.test`` ping to one endpoint; returns the delivery id."""
        hook = await self.get(hook_id)
        event_id = f"evt_{uuid.uuid4().hex}"
        payload = {
            "id": event_id,
            "type": "webhook.test",
            "timestamp": time.time(),
            "data": {"webhook": hook.id},
        }
        rows = await self.sql.fetch(
            "INSERT INTO deliveries (webhook_id, event_id, payload, next_at, status, created_at)"
            " VALUES (?,?,?,?, 'pending', ?) RETURNING id",
            hook.id,
            event_id,
            json.dumps(payload),
            time.time(),
            time.time(),
        )
        self.notify()
        return int(rows[0][0])

    # ------------------------------------------------------------- delivery

    async def fan_out(self) -> int:
        """Turn new outbox events into delivery rows (durable cursor, one txn)."""
        made = 0
        hooks = await self.subscriptions()
        async with self.sql.transaction() as tx:
            # Several replicas may fan out the same events: the unique
            # (webhook_id, event_id) pair makes that harmless.
            rows = await tx.fetch("SELECT position FROM cursors WHERE name='webhooks'")
            position = rows[0][0] if rows else 0
            events = await tx.fetch(
                "SELECT id, event_id, type, ws, path, payload FROM outbox WHERE id > ? "
                "ORDER BY id LIMIT 500",
                position,
            )
            for oid, event_id, kind, ws, path, payload in events:
                position = oid
                for hook in hooks:
                    if hook.wants(kind, ws, path):
                        await tx.execute(
                            "INSERT INTO deliveries (webhook_id, event_id, payload, next_at, "
                            "status, created_at) VALUES (?,?,?,?, 'pending', ?) "
                            "ON CONFLICT DO NOTHING",
                            hook.id,
                            event_id,
                            payload,
                            time.time(),
                            time.time(),
                        )
                        made += 1
            if events:
                await tx.execute(
                    "INSERT INTO cursors (name, position) VALUES ('webhooks', ?) "
                    "ON CONFLICT (name) DO UPDATE SET position=excluded.position",
                    position,
                )
        return made

    async def _due(self, limit: int = 20) -> list[tuple[Any, ...]]:
        # The outbox row (unique event_id) holds the writer's call-context headers:
        # the attempt is traced as part of the write. Test pings have no row.
        return await self.sql.fetch(
            "SELECT d.id, d.webhook_id, d.event_id, d.payload, d.attempts, w.url, w.secret, "
            "w.old_secret, w.old_secret_until, w.enabled, o.headers FROM deliveries d "
            "JOIN webhooks w ON w.id = d.webhook_id LEFT JOIN outbox o ON o.event_id = d.event_id "
            "WHERE d.status='pending' AND d.next_at <= ? ORDER BY d.next_at LIMIT ?",
            time.time(),
            limit,
        )

    async def next_due_in(self) -> float | None:
        rows = await self.sql.fetch("SELECT MIN(next_at) FROM deliveries WHERE status='pending'")
        return None if not rows or rows[0][0] is None else max(0.0, rows[0][0] - time.time())

    async def deliver_due(self) -> int:
        """Attempt every delivery that is due; returns how many were attempted.

        A batch goes out concurrently, so one slow receiver does not hold up
        the others for its whole timeout.
        """
        attempted = 0
        failures: list[BaseException] = []
        while not failures and (due := await self._due()):
            async with anyio.create_task_group() as tg:
                for row in due:
                    tg.start_soon(self._attempt_safely, row, failures)
            attempted += len(due)
        return attempted

    async def _attempt_safely(self, row: tuple[Any, ...], failures: list[BaseException]) -> None:
        try:
            await self._attempt(*row)
        except Exception as exc:  # bookkeeping failed (database down): retried next round
            log.warning("webhook delivery %s: recording the attempt failed: %s", row[0], exc)
            failures.append(exc)

    async def _attempt(
        self,
        did: int,
        hook_id: str,
        event_id: str,
        payload: str,
        attempts: int,
        url: str,
        secret: str,
        old_secret: str | None,
        old_until: float | None,
        enabled: int,
        writer_headers: str | None = None,
    ) -> None:
        if not enabled:
            await self._finish(did, "disabled", None, "the endpoint is disabled")
            return
        body = payload.encode()
        ts = int(time.time())
        sigs = [sign(secret, event_id, ts, body)]
        if old_secret and old_until and old_until > time.time():
            sigs.append(sign(old_secret, event_id, ts, body))
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(sigs),
        }
        status: int | None = None
        retry_after: float | None = None
        parent = _writer_trace(writer_headers)
        token = otel_context.attach(parent) if parent is not None else None
        try:
            with client_span("POST", url, headers=headers) as span:
                span.set("microhive.webhook.id", hook_id)
                span.set("microhive.webhook.event_id", event_id)
                span.set("microhive.webhook.attempt", attempts + 1)
                await self.policy.check_url(url)
                response = await self._client.post(url, content=body, headers=headers)
                status = response.status_code
                span.http_status(status)
                if status < 200 or 300 <= status < 500:  # not delivered: a failed attempt
                    span.span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            retry_after = _retry_after(response.headers.get("retry-after"))
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:  # network errors, refused targets: all retried
            error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            if token is not None:
                otel_context.detach(token)
        attempts += 1
        if error is None:
            await self._finish(did, "delivered", status, None, attempts)
        elif status == 410:
            await self._finish(did, "failed", status, "410 Gone: endpoint disabled", attempts)
            await self.sql.execute(
                "UPDATE webhooks SET enabled=0, disabled_reason=? WHERE id=?",
                "the receiver answered 410 Gone",
                hook_id,
            )
        elif attempts > len(self.schedule):
            await self._finish(did, "failed", status, error, attempts)
        else:
            delay = self.schedule[attempts - 1] * (1 + random.uniform(-self.jitter, self.jitter))
            if retry_after is not None:
                delay = max(delay, retry_after)
            await self.sql.execute(
                "UPDATE deliveries SET attempts=?, next_at=?, last_status=?, last_error=? "
                "WHERE id=?",
                attempts,
                time.time() + delay,
                status,
                error,
                did,
            )

    async def _finish(
        self,
        did: int,
        status: str,
        code: int | None,
        error: str | None,
        attempts: int | None = None,
    ) -> None:
        await self.sql.execute(
            "UPDATE deliveries SET status=?, last_status=?, last_error=?, "
            "attempts=COALESCE(?, attempts) WHERE id=?",
            status,
            code,
            error,
            attempts,
            did,
        )

    async def run(self, poll: float = 1.0) -> None:
        while True:
            self._wake = anyio.Event()
            try:
                await self.fan_out()
                await self.deliver_due()
            except Exception as exc:
                log.warning("webhook delivery loop error (will retry): %s", exc)
            wait = await self.next_due_in()
            with anyio.move_on_after(poll if wait is None else min(poll, wait)):
                await self._wake.wait()
