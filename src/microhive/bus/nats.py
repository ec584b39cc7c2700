"""``nats://HOST:PORT``: the bus on NATS JetStream (extra ``nats``).

Mapping:

* one JetStream stream per namespace (``?namespace=mh`` -> stream ``MH`` holding
  subjects ``mh.>``), file storage, ``duplicate_window`` = the bus dedup window;
  a publish waits for JetStream's PubAck (stored; ``duplicate`` from the server's
  ``Nats-Msg-Id`` de-duplication);
* a queue group is a durable pull consumer named after the group, shared by all
  members (each fetch hands a message to one member); a fan-out subscriber is a
  pull consumer of its own, deleted on close and by the server after
  ``inactive_threshold`` if its process died;
* AckWait = the subscription's ``ack_wait`` (an unacked message of a killed
  member is redelivered to another after it), ``in_progress`` sends ``+WPI``,
  nak with the backoff delay sends ``-NAK {"delay": ...}``;
* MaxDeliver is left unlimited on the server on purpose: the server drops a
  message silently (an advisory only) after MaxDeliver, whereas the shared
  delivery logic dead-letters it with its reason and history -- including a
  message whose last attempt crashed -- so nothing is dropped unseen.

Persistence: what an acknowledged publish survives is what the server promises:
with file storage and ``sync_interval`` at its default (2 min) a clean restart
or a killed server keeps everything (written to the OS before the ack); a power
loss needs ``sync_interval: always`` in the server config or a replicated stream.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from microhive.bus._bus import Bus
from microhive.bus._core import HEADER_MSG_ID, ConsumerSpec, Feed, PublishAck, Receipt
from microhive.errors import InvalidInput, MissingDependency, ServiceUnavailable, UpstreamError

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import api
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependency("nats-py", "nats", "The NATS JetStream bus (nats://)") from exc

__all__ = ["NatsBus"]

_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_STRIP = ("nats-msg-id", "nats-expected-stream")


def _failure(what: str, exc: Exception) -> Exception:
    if isinstance(exc, nats.js.errors.APIError):
        return UpstreamError(f"NATS {what}: {exc}")
    return ServiceUnavailable(f"NATS {what}: {type(exc).__name__}: {exc}")


class _NatsReceipt(Receipt):
    __slots__ = ("_msg",)

    def __init__(self, msg: Msg, prefix_len: int) -> None:
        meta = msg.metadata
        raw = msg.headers or {}
        headers = {k.lower(): v for k, v in raw.items() if k.lower() not in _STRIP}
        headers[HEADER_MSG_ID] = raw.get("Nats-Msg-Id", "")
        super().__init__(
            subject=msg.subject[prefix_len:],
            data=msg.data,
            headers=headers,
            msg_id=headers[HEADER_MSG_ID],
            sequence=meta.sequence.stream,
            deliveries=meta.num_delivered,
            published_at=meta.timestamp.timestamp(),
        )
        self._msg = msg

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float) -> None:
        await self._msg.nak(delay=delay if delay > 0 else None)

    async def term(self) -> None:
        await self._msg.term()

    async def touch(self) -> None:
        await self._msg.in_progress()


class _NatsFeed(Feed):
    def __init__(self, bus: NatsBus, spec: ConsumerSpec, psub: Any) -> None:
        self.bus = bus
        self.spec = spec
        self.psub = psub

    async def fetch(self, max_messages: int, max_wait: float) -> list[Receipt]:
        try:
            msgs = await self.psub.fetch(batch=max_messages, timeout=max_wait)
        except nats.errors.TimeoutError:
            return []
        except Exception as exc:
            raise _failure("fetch", exc) from exc
        n = len(self.bus.prefix)
        return [_NatsReceipt(m, n) for m in msgs]

    async def pending(self) -> tuple[int | None, int | None]:
        try:
            info = await self.bus._js.consumer_info(self.bus.stream, self.spec.name)
        except Exception as exc:
            raise _failure("consumer info", exc) from exc
        return info.num_pending, info.num_ack_pending

    async def aclose(self, *, delete: bool) -> None:
        with contextlib.suppress(Exception):
            await self.psub.unsubscribe()
        if delete and self.bus._nc is not None and self.bus._nc.is_connected:
            with contextlib.suppress(Exception):
                await self.bus._js.delete_consumer(self.bus.stream, self.spec.name)


class NatsBus(Bus):
    """Bus on NATS JetStream. URL: ``nats://host:port[,host2:port]?namespace=mh``."""

    scheme = "nats"

    def __init__(self, url: str, *, dedup_window: float = 120.0, max_deliveries: int = 5) -> None:
        super().__init__(url, dedup_window=dedup_window, max_deliveries=max_deliveries)
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        namespace = query.get("namespace", ["mh"])[0]
        if not _NAMESPACE.match(namespace):
            raise InvalidInput(f"bus url {url!r}: namespace must be 1-32 letters, digits, _ or -")
        self.servers = [f"nats://{host}" for host in parts.netloc.split(",") if host]
        if not self.servers:
            raise InvalidInput(f"bus url {url!r}: expected nats://host:port")
        self.namespace = namespace
        self.prefix = namespace + "."
        self.stream = namespace.upper().replace("-", "_")
        self._nc: Client | None = None
        self._js: Any = None

    async def _connect(self) -> None:
        async def quiet(exc: Exception) -> None:  # nats-py logs through this; we retry anyway
            return None

        try:
            self._nc = await nats.connect(
                servers=self.servers,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=quiet,
                allow_reconnect=True,
            )
        except Exception as exc:
            raise _failure(f"connect to {', '.join(self.servers)}", exc) from exc
        self._js = self._nc.jetstream(timeout=5.0)
        await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=self.stream,
            subjects=[self.prefix + ">"],
            storage=api.StorageType.FILE,
            duplicate_window=self.dedup_window,
        )
        try:
            try:
                info = await self._js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                await self._js.add_stream(config)
                return
            if info.config.duplicate_window != self.dedup_window:
                await self._js.update_stream(info.config.evolve(duplicate_window=self.dedup_window))
        except Exception as exc:
            raise _failure(f"create stream {self.stream}", exc) from exc

    async def _disconnect(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def ping(self) -> None:
        self._check_open()
        try:
            await self._js.stream_info(self.stream)
        except Exception as exc:
            raise _failure("ping", exc) from exc

    async def _store(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str
    ) -> PublishAck:
        # the id travels once, as JetStream's own dedup header
        headers = {k: v for k, v in headers.items() if k != HEADER_MSG_ID}
        headers["Nats-Msg-Id"] = msg_id
        try:
            ack = await self._js.publish(self.prefix + subject, data, headers=headers)
        except Exception as exc:
            raise _failure(f"publish to {subject}", exc) from exc
        return PublishAck(subject, ack.seq, msg_id, bool(ack.duplicate))

    def _consumer_config(self, spec: ConsumerSpec) -> Any:
        start = spec.start
        options: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.NEW}
        if start.kind == "beginning":
            options = {"deliver_policy": api.DeliverPolicy.ALL}
        elif start.kind == "sequence":
            options = {
                "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": start.sequence,
            }
        elif start.kind == "time" and start.time is not None:
            when = datetime.datetime.fromtimestamp(start.time, datetime.UTC)
            options = {"deliver_policy": api.DeliverPolicy.BY_START_TIME, "opt_start_time": when}
        return api.ConsumerConfig(
            name=spec.name,
            durable_name=spec.name if spec.durable else None,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait,
            max_deliver=-1,
            filter_subject=self.prefix + spec.pattern,
            max_ack_pending=10_000,
            inactive_threshold=None if spec.durable else 300.0,
            **options,
        )

    async def _open_feed(self, spec: ConsumerSpec) -> Feed:
        want = self.prefix + spec.pattern
        try:
            try:
                info = await self._js.consumer_info(self.stream, spec.name)
            except nats.js.errors.NotFoundError:
                await self._js.add_consumer(self.stream, self._consumer_config(spec))
            else:
                if info.config.filter_subject != want:
                    have = (info.config.filter_subject or "")[len(self.prefix) :]
                    raise InvalidInput(
                        f"queue group {spec.name!r} already subscribes to {have!r}, "
                        f"not {spec.pattern!r}"
                    )
            psub = await self._js.pull_subscribe_bind(consumer=spec.name, stream=self.stream)
        except InvalidInput:
            raise
        except Exception as exc:
            raise _failure(f"subscribe to {spec.pattern}", exc) from exc
        return _NatsFeed(self, spec, psub)
