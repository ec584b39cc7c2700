"""``redis://HOST:PORT/DB``: the bus on Redis Streams (extra ``redis``).

Mapping:

* one stream per namespace (``?namespace=mh`` -> key ``{mh}:log``); every entry
  holds the subject, payload, headers, message id and a gap-free sequence from
  ``{mh}:seq``. A Lua script does dedup + sequence + ``XADD`` atomically: a
  message id seen within the window (``{mh}:dedup:<id>`` with a TTL) stores
  nothing and returns the first copy's sequence;
* every subscription is a consumer group (Redis has no server-side subject
  filter, so entries not matching the pattern are acked and skipped by the
  client): a queue group is a named group shared by its members, a fan-out
  subscriber a group of its own, destroyed on close;
* a member that dies leaves its entries in the group's pending list; the others
  take them over with ``XAUTOCLAIM`` once they have been idle for ``ack_wait``
  (this is also what counts deliveries: ``times_delivered`` from ``XPENDING``);
* nak with a delay keeps the entry pending and re-claims it with ``XCLAIM`` when
  the delay is over (keeping it fresh meanwhile, so others do not steal it);
  ``in_progress`` is ``XCLAIM ... JUSTID`` to reset the idle time.

Persistence: an acknowledged publish survives a restart only as far as the
server's settings promise. With ``appendonly yes`` and ``appendfsync always``
the reply is sent after the AOF write is fsynced: nothing acknowledged is lost.
With ``appendfsync everysec`` (Redis' default when AOF is on) up to a second may
be lost on a crash; with RDB snapshots only, everything since the last snapshot.
``?maxlen=N`` trims the stream approximately to N entries (default 1,000,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import math
import os
import re
import socket
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from microhive.bus._bus import Bus
from microhive.bus._core import ConsumerSpec, Feed, PublishAck, Receipt, subject_matches
from microhive.errors import InvalidInput, MissingDependency, ServiceUnavailable, UpstreamError

try:
    import redis.asyncio as aioredis
    import redis.exceptions
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependency("redis", "redis", "The Redis Streams bus (redis://)") from exc

__all__ = ["RedisBus"]

_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

_PUBLISH = """
local seen = redis.call('GET', KEYS[2])
if seen then return {tonumber(seen), 1} end
local seq = redis.call('INCR', KEYS[3])
if tonumber(ARGV[6]) > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*',
             's', ARGV[1], 'd', ARGV[2], 'h', ARGV[3], 'm', ARGV[4], 'n', seq)
else
  redis.call('XADD', KEYS[1], '*', 's', ARGV[1], 'd', ARGV[2], 'h', ARGV[3], 'm', ARGV[4], 'n', seq)
end
redis.call('SET', KEYS[2], seq, 'PX', ARGV[5])
return {seq, 0}
"""


def _failure(what: str, exc: Exception) -> Exception:
    if isinstance(exc, redis.exceptions.ResponseError):
        return UpstreamError(f"Redis {what}: {exc}")
    return ServiceUnavailable(f"Redis {what}: {type(exc).__name__}: {exc}")


class _RedisReceipt(Receipt):
    __slots__ = ("_feed", "entry_id")

    def __init__(self, feed: _RedisFeed, entry_id: bytes, fields: dict[bytes, bytes], n: int):
        super().__init__(
            subject=fields[b"s"].decode(),
            data=fields[b"d"],
            headers=json.loads(fields[b"h"]),
            msg_id=fields[b"m"].decode(),
            sequence=int(fields[b"n"]),
            deliveries=n,
            published_at=int(entry_id.split(b"-")[0]) / 1000,
        )
        self._feed = feed
        self.entry_id = entry_id

    async def ack(self) -> None:
        await self._feed._xack(self.entry_id)

    async def term(self) -> None:
        await self._feed._xack(self.entry_id)

    async def nak(self, delay: float) -> None:
        self._feed._hold(self.entry_id, time.monotonic() + max(delay, 0.0))

    async def touch(self) -> None:
        await self._feed._refresh([self.entry_id])


class _RedisFeed(Feed):
    def __init__(self, bus: RedisBus, spec: ConsumerSpec, min_seq: int) -> None:
        self.bus = bus
        self.spec = spec
        self.min_seq = min_seq
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._held: list[tuple[float, bytes]] = []  # (due, entry id): nak'd, waiting
        self._held_touched = time.monotonic()
        self._last_reclaim = 0.0
        self._reclaim_every = min(max(spec.ack_wait / 4, 0.05), 5.0)
        self._batch: tuple[list[bytes], asyncio.Future[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def r(self) -> Any:
        return self.bus._r

    def _hold(self, entry_id: bytes, due: float) -> None:
        heapq.heappush(self._held, (due, entry_id))

    async def _xack(self, entry_id: bytes) -> None:
        """Ack; acks made in the same loop iteration go out as one ``XACK``."""
        if self._batch is None:
            self._batch = ([], asyncio.get_running_loop().create_future())
            asyncio.get_running_loop().call_soon(self._send_acks)
        ids, done = self._batch
        ids.append(entry_id)
        await done

    def _send_acks(self) -> None:
        assert self._batch is not None
        ids, done = self._batch
        self._batch = None
        task = asyncio.create_task(self._ack_many(ids, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ack_many(self, ids: list[bytes], done: asyncio.Future[None]) -> None:
        try:
            await self.r.xack(self.bus.stream, self.spec.name, *ids)
        except redis.exceptions.RedisError as exc:
            done.set_exception(_failure("ack", exc))
        else:
            done.set_result(None)

    async def _refresh(self, ids: list[bytes]) -> None:
        await self.r.xclaim(self.bus.stream, self.spec.name, self.consumer, 0, ids, justid=True)

    async def _counts(self, ids: list[bytes]) -> dict[bytes, int]:
        rows = await self.r.xpending_range(
            self.bus.stream, self.spec.name, min=min(ids), max=max(ids), count=len(ids) * 4 + 16
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def _wrap(self, entries: list[Any], fresh: bool) -> list[Receipt]:
        entries = [(eid, f) for eid, f in entries if f]  # entries deleted by trimming: skip
        if not entries:
            return []
        counts = {} if fresh else await self._counts([eid for eid, _ in entries])
        out: list[Receipt] = []
        skip: list[bytes] = []
        for eid, fields in entries:
            subject = fields.get(b"s", b"").decode()
            if int(fields.get(b"n", 0)) < self.min_seq or not subject_matches(
                self.spec.pattern, subject
            ):
                skip.append(eid)
                continue
            out.append(_RedisReceipt(self, eid, fields, 1 if fresh else counts.get(eid, 2)))
        if skip:
            await self.r.xack(self.bus.stream, self.spec.name, *skip)
        return out

    async def fetch(self, max_messages: int, max_wait: float) -> list[Receipt]:
        deadline = time.monotonic() + max_wait
        try:
            while True:
                got = await self._due(max_messages)
                if not got:
                    got = await self._reclaim(max_messages)
                now = time.monotonic()
                if not got:
                    block = min(deadline - now, 0.25, self._reclaim_every)
                    if self._held:
                        block = min(block, self._held[0][0] - now)
                    reply = await self.r.xreadgroup(
                        self.spec.name,
                        self.consumer,
                        {self.bus.stream: ">"},
                        count=max_messages,
                        block=max(int(block * 1000), 1),
                    )
                    entries = reply[0][1] if reply else []
                    got = await self._wrap(entries, fresh=True)
                if got or time.monotonic() >= deadline:
                    return got
        except redis.exceptions.RedisError as exc:
            raise _failure("fetch", exc) from exc

    async def _due(self, want: int) -> list[Receipt]:
        now = time.monotonic()
        ids: list[bytes] = []
        while self._held and self._held[0][0] <= now and len(ids) < want:
            ids.append(heapq.heappop(self._held)[1])
        if self._held and now - self._held_touched > self.spec.ack_wait / 3:
            self._held_touched = now  # keep waiting naks ours, so XAUTOCLAIM leaves them
            await self._refresh([eid for _, eid in self._held])
        if not ids:
            return []
        entries = await self.r.xclaim(self.bus.stream, self.spec.name, self.consumer, 0, ids)
        return await self._wrap(entries, fresh=False)

    async def _reclaim(self, want: int) -> list[Receipt]:
        now = time.monotonic()
        if now - self._last_reclaim < self._reclaim_every:
            return []
        self._last_reclaim = now
        reply = await self.r.xautoclaim(
            self.bus.stream,
            self.spec.name,
            self.consumer,
            min_idle_time=int(self.spec.ack_wait * 1000),
            start_id="0-0",
            count=want,
        )
        held = {eid for _, eid in self._held}
        entries = [e for e in reply[1] if e[0] not in held]
        return await self._wrap(entries, fresh=False)

    async def pending(self) -> tuple[int | None, int | None]:
        """From XINFO GROUPS: ``lag`` (entries not yet read by the group, of every
        subject: the stream is shared and filtered here) and ``pending`` (unacked)."""
        try:
            groups = await self.r.xinfo_groups(self.bus.stream)
        except redis.exceptions.RedisError as exc:
            raise _failure("group info", exc) from exc
        for group in groups:
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.spec.name:
                lag = group.get("lag")
                return (int(lag) if lag is not None else None), int(group.get("pending", 0))
        return None, None

    async def aclose(self, *, delete: bool) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):
            if delete:
                await self.r.xgroup_destroy(self.bus.stream, self.spec.name)
                await self.r.hdel(self.bus.groups_key, self.spec.name)
                return
            info = await self.r.xpending_range(
                self.bus.stream, self.spec.name, "-", "+", 1, consumername=self.consumer
            )
            if not info:  # nothing pending with us: forget this member
                await self.r.xgroup_delconsumer(self.bus.stream, self.spec.name, self.consumer)


class RedisBus(Bus):
    """Bus on Redis Streams. URL: ``redis://host:port/db?namespace=mh&maxlen=1000000``."""

    scheme = "redis"

    def __init__(self, url: str, *, dedup_window: float = 120.0, max_deliveries: int = 5) -> None:
        super().__init__(url, dedup_window=dedup_window, max_deliveries=max_deliveries)
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        namespace = query.pop("namespace", ["mh"])[0]
        if not _NAMESPACE.match(namespace):
            raise InvalidInput(f"bus url {url!r}: namespace must be 1-32 letters, digits, _ or -")
        try:
            self.maxlen = int(query.pop("maxlen", ["1000000"])[0])
        except ValueError:
            raise InvalidInput(f"bus url {url!r}: maxlen must be a whole number") from None
        self.client_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.namespace = namespace
        self.stream = f"{{{namespace}}}:log"
        self.seq_key = f"{{{namespace}}}:seq"
        self.groups_key = f"{{{namespace}}}:groups"
        self._dedup_prefix = f"{{{namespace}}}:dedup:"
        self._r: Any = None
        self._script: Any = None

    async def _connect(self) -> None:
        self._r = aioredis.Redis.from_url(self.client_url, socket_connect_timeout=2)
        self._script = self._r.register_script(_PUBLISH)
        await self.ping()

    async def _disconnect(self) -> None:
        if self._r is not None:
            await self._r.aclose()

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except redis.exceptions.RedisError as exc:
            raise _failure(f"ping {self.client_url}", exc) from exc

    async def _store(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str
    ) -> PublishAck:
        keys = [self.stream, self._dedup_prefix + msg_id, self.seq_key]
        args = [
            subject,
            data,
            json.dumps(headers, separators=(",", ":")),
            msg_id,
            int(self.dedup_window * 1000),
            self.maxlen,
        ]
        try:
            seq, dup = await self._script(keys=keys, args=args)
        except redis.exceptions.RedisError as exc:
            raise _failure(f"publish to {subject}", exc) from exc
        return PublishAck(subject, int(seq), msg_id, bool(dup))

    async def _open_feed(self, spec: ConsumerSpec) -> Feed:
        start = spec.start
        first, min_seq = "$", 0
        if start.kind == "beginning":
            first = "0"
        elif start.kind == "sequence" and start.sequence is not None:
            first, min_seq = "0", start.sequence
        elif start.kind == "time" and start.time is not None:
            # entries from the first whole millisecond at or after the time
            first = f"{max(math.ceil(start.time * 1000) - 1, 0)}-18446744073709551615"
        try:
            known = await self._r.hget(self.groups_key, spec.name)
            if known is not None and known.decode() != spec.pattern:
                raise InvalidInput(
                    f"queue group {spec.name!r} already subscribes to {known.decode()!r}, "
                    f"not {spec.pattern!r}"
                )
            try:
                await self._r.xgroup_create(self.stream, spec.name, id=first, mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                min_seq = 0  # joined an existing group: it keeps its place
            await self._r.hsetnx(self.groups_key, spec.name, spec.pattern)
        except redis.exceptions.RedisError as exc:
            raise _failure(f"subscribe to {spec.pattern}", exc) from exc
        return _RedisFeed(self, spec, min_seq)
