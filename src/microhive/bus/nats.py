"""``nats://HOST:PORT``: the bus on NATS JetStream (extra ``nats``).

Mapping:

* one JetStream stream per namespace (``?namespace=mh`` -> stream ``MH`` holding
  subjects ``mh.>``), file storage, ``duplicate_window`` = the bus dedup window;
  a publish waits for JetStream's PubAck (stored; ``duplicate`` from the server's
  ``Nats-Msg-Id`` de-duplication);
* a queue group is a durable pull consumer named after the group, shared by all
  members (each pull request hands a message to one member); a fan-out subscriber
  is a pull consumer of its own, deleted on close and by the server after
  ``inactive_threshold`` if its process died;
* each member keeps one pull request open at a time, for no more messages than
  it has free handler slots, and reads the deliveries through one inbox
  subscription (:class:`_NatsFeed`); a publish is a request answered by
  JetStream's PubAck;
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

import asyncio
import contextlib
import datetime
import json
import re
from collections import deque
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

#: Seconds a JetStream API call (a publish's PubAck included) may take.
_TIMEOUT = 5.0
#: Seconds after a pull request's expiry by which its status should have come.
_PULL_GRACE = 0.5
#: Statuses that only end a pull request (404 nothing now, 408 expired); any other
#: (409 conflict: batch too big, consumer deleted, ...) is a failure, retried with backoff.
_REQUEST_OVER = frozenset((api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT))
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_STRIP = ("nats-msg-id", "nats-expected-stream")


def _delivery_of(msg: Msg) -> tuple[int, int, float]:
    """(stream sequence, delivery number, publish time) from a delivery's ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``
    is read directly (nats-py's ``metadata`` builds dataclasses and a datetime per
    message); any other shape (a JetStream domain) goes through ``metadata``.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[4]), int(tokens[7]) / 1e9
    meta = msg.metadata
    return meta.sequence.stream, meta.num_delivered, meta.timestamp.timestamp()


def _failure(what: str, exc: Exception) -> Exception:
    if isinstance(exc, nats.js.errors.APIError):
        return UpstreamError(f"NATS {what}: {exc}")
    return ServiceUnavailable(f"NATS {what}: {type(exc).__name__}: {exc}")


class _NatsReceipt(Receipt):
    __slots__ = ("_msg",)

    def __init__(self, msg: Msg, prefix_len: int) -> None:
        raw = msg.headers or {}
        headers = {low: v for k, v in raw.items() if (low := k.lower()) not in _STRIP}
        msg_id = headers[HEADER_MSG_ID] = raw.get("Nats-Msg-Id", "")
        sequence, deliveries, published_at = _delivery_of(msg)
        super().__init__(
            subject=msg.subject[prefix_len:],
            data=msg.data,
            headers=headers,
            msg_id=msg_id,
            sequence=sequence,
            deliveries=deliveries,
            published_at=published_at,
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
    """A pull consumer read through one inbox subscription, one pull request at a time.

    ``fetch`` asks JetStream for at most the free handler slots (``batch``, expiring
    after ``max_wait``) and returns what has arrived; while that request is open,
    later fetches wait on it instead of asking again, so a member never holds more
    deliveries than it has slots. A request ends when its batch is filled or with
    a status (408 expired; any other but a heartbeat is a failure ``fetch``
    raises); one whose status never came (a reconnect) counts as ended shortly
    after its expiry. Deliveries reach ``_on_message`` through the subscription's
    callback: no task and no timer per message, which is what nats-py's
    ``fetch`` costs.
    """

    def __init__(self, bus: NatsBus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self._next = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{bus.stream}.{spec.name}"
        self._inbox = ""
        self._sub: Any = None
        self._ready: deque[Msg] = deque()
        self._request = ""  # reply subject of the open pull request; "" when none is open
        self._owed = 0  # deliveries the open request may still bring
        self._until = 0.0  # loop time by which it has ended, status or not
        self._pulls = 0
        self._error: Exception | None = None
        self._wake: asyncio.Future[None] | None = None

    async def open(self) -> None:
        nc = self.bus._client()
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox + ".*", cb=self._on_message)

    async def fetch(self, max_messages: int, max_wait: float) -> list[Receipt]:
        if not self._ready and self._error is None:
            loop = asyncio.get_running_loop()
            if not self._request or loop.time() >= self._until:
                await self._pull(max_messages, max_wait)
            if not self._ready and self._error is None:
                wake = self._wake = loop.create_future()
                try:
                    await asyncio.wait_for(wake, max(0.0, min(max_wait, self._until - loop.time())))
                except TimeoutError:
                    pass
                finally:
                    self._wake = None
        if self._error is not None and not self._ready:
            error, self._error = self._error, None
            raise error
        n = len(self.bus.prefix)
        ready = self._ready
        return [_NatsReceipt(ready.popleft(), n) for _ in range(min(max_messages, len(ready)))]

    async def _pull(self, batch: int, expires: float) -> None:
        self._pulls += 1
        reply = f"{self._inbox}.{self._pulls}"
        body = json.dumps({"batch": batch, "expires": int(expires * 1e9)}).encode()
        self._request, self._owed = reply, batch
        self._until = asyncio.get_running_loop().time() + expires + _PULL_GRACE
        try:
            await self.bus._client().publish(self._next, body, reply=reply)
        except Exception as exc:
            self._request = ""
            raise _failure("fetch", exc) from exc

    async def _on_message(self, msg: Msg) -> None:
        if msg.reply:  # a delivery: its reply subject is where the ack goes
            self._ready.append(msg)
            self._owed -= 1
            if self._owed <= 0:
                self._request = ""
        elif msg.subject == self._request:  # a status about the open request
            headers = msg.headers or {}
            status = headers.get(api.Header.STATUS, "")
            if status == api.StatusCode.CONTROL_MESSAGE:
                return  # a heartbeat: the request goes on
            self._request = ""
            if status not in _REQUEST_OVER:
                text = headers.get(api.Header.DESCRIPTION, "")
                self._error = UpstreamError(f"NATS fetch: status {status} {text}".strip())
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def pending(self) -> tuple[int | None, int | None]:
        try:
            info = await self.bus._js.consumer_info(self.bus.stream, self.spec.name)
        except Exception as exc:
            raise _failure("consumer info", exc) from exc
        return info.num_pending, info.num_ack_pending

    async def aclose(self, *, delete: bool) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
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
        self._js = self._nc.jetstream(timeout=_TIMEOUT)
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

    def _client(self) -> Client:
        if self._nc is None:
            raise ServiceUnavailable(f"bus {self.url} is not connected")
        return self._nc

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
        # the id travels once, as JetStream's own dedup header (the dict is ours to change)
        headers.pop(HEADER_MSG_ID, None)
        headers["Nats-Msg-Id"] = msg_id
        # JetStream's publish is a request answered by a PubAck; done here rather than
        # by js.publish, which builds an api.PubAck dataclass per message for two fields.
        try:
            try:
                reply = await self._client().request(
                    self.prefix + subject, data, timeout=_TIMEOUT, headers=headers
                )
            except nats.errors.NoRespondersError:
                raise nats.js.errors.NoStreamResponseError from None
            answer = json.loads(reply.data)
            if "error" in answer:
                raise nats.js.errors.APIError.from_error(answer["error"])
            return PublishAck(subject, answer["seq"], msg_id, bool(answer.get("duplicate")))
        except Exception as exc:
            raise _failure(f"publish to {subject}", exc) from exc

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
            feed = _NatsFeed(self, spec)
            await feed.open()
        except InvalidInput:
            raise
        except Exception as exc:
            raise _failure(f"subscribe to {spec.pattern}", exc) from exc
        return feed
