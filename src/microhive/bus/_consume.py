"""Consuming: deliveries turned into handler calls, with one set of rules for every backend.

* the handler runs inside the message's :class:`CallContext`, so anything it
  publishes carries the same trace and one hop fewer;
* a message that arrives with no hops left, past its deadline, with malformed
  context headers or a JSON body that does not parse is *not* handed to the
  handler: it goes straight to the dead-letter subject with the reason;
* returning normally acks; raising naks with the subscription's backoff; after
  ``max_deliveries`` attempts the message is dead-lettered with its delivery
  history; raising :class:`InvalidInput` (the message itself is bad) or a
  :class:`Stop` dead-letters at once, since retrying cannot help.

Dead letters go to ``dlq.<subject>`` with the original payload and headers (so
the trace id survives) plus ``microhive-dlq-*`` headers saying why. Their
message id is derived from the consumer and the original id, so a consumer that
crashes between dead-lettering and settling does not store two copies.

With a tracer provider installed, each delivery is a ``process {subject}``
CONSUMER span (a child of, and linked to, the publish span that created the
message) around the checks and the handler: the handler's spans are its
children, a failed attempt records its error, and a dead letter its reason --
a hop limit as ``loop_stopped`` (:mod:`._tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Self

from microhive.bus._core import CONTENT_TYPE, HEADER_MSG_ID, ConsumerSpec, Feed, Receipt
from microhive.bus._tracing import mark_dead_letter, tracing_on
from microhive.context import (
    HEADER_BUDGET_STEPS,
    HEADER_BUDGET_TOKENS,
    HEADER_DEADLINE,
    HEADER_HOPS,
    HEADER_MAX_HOPS,
    CallContext,
)
from microhive.errors import InvalidContext, InvalidInput, Stop
from microhive.tracing import TracedSpan, process_span

if TYPE_CHECKING:
    from microhive.bus._bus import Bus

__all__ = ["CONTEXT_HEADERS", "DLQ_PREFIX", "Delivery", "Handler", "Subscription"]

log = logging.getLogger("microhive.bus")

DLQ_PREFIX = "dlq."
_HISTORY_KEEP = 20
_HISTORY_TRACKED = 10_000
#: Seconds a consumer's backlog figure (``Subscription.stats()``) is reused before a refresh.
_PENDING_TTL = 1.0
#: Distinct call contexts a subscription keeps ready to run handlers in (see ``_context_for``).
_CONTEXTS_KEPT = 256
_NO_CONTEXT = CallContext()

Handler = Callable[["Delivery"], Awaitable[None]]


class Delivery:
    """One delivery of a message to a handler, with the means to settle it.

    Settle at most once; returning from the handler without settling acks.
    """

    __slots__ = ("_context", "_parented", "_receipt", "_settled", "_span", "_sub")

    def __init__(
        self,
        sub: Subscription,
        receipt: Receipt,
        context: CallContext,
        span: TracedSpan | None = None,
    ) -> None:
        self._sub = sub
        self._receipt = receipt
        self._settled = False
        self._span = span
        self._context = context
        self._parented = span is None

    @property
    def context(self) -> CallContext:
        """The message's call context; while traced, its parent is this delivery's span.

        Made on first use: a handler that never looks saves the propagation work.
        """
        if not self._parented:
            self._parented = True
            span = self._span
            if span is not None and span.span.is_recording():
                self._context = _with_parent(self._context, span)
        return self._context

    @context.setter
    def context(self, value: CallContext) -> None:
        self._context = value
        self._parented = True

    subject = property(lambda self: self._receipt.subject)
    data = property(lambda self: self._receipt.data)
    headers = property(lambda self: self._receipt.headers)
    msg_id = property(lambda self: self._receipt.msg_id)
    sequence = property(lambda self: self._receipt.sequence)
    #: This is delivery number N of the message to this consumer (1 = first time).
    deliveries = property(lambda self: self._receipt.deliveries)
    published_at = property(lambda self: self._receipt.published_at)

    def json(self) -> Any:
        """The payload parsed as JSON; :class:`InvalidInput` (dead-letters) if it is not."""
        try:
            return json.loads(self._receipt.data)
        except ValueError as exc:
            raise InvalidInput(f"payload of {self.subject!r} is not valid JSON: {exc}") from None

    def text(self) -> str:
        try:
            return self._receipt.data.decode()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"payload of {self.subject!r} is not UTF-8: {exc}") from None

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if not self._claim():
            return
        await self._receipt.ack()
        self._sub.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        """Deliver again after ``delay`` (default: the subscription's backoff)."""
        if not self._claim():
            return
        spec = self._sub.spec
        if self._receipt.deliveries >= spec.max_deliveries:
            await self._sub._dead_letter(
                self._receipt,
                f"max deliveries ({spec.max_deliveries}) reached: nak",
                "max_deliveries",
                self._span,
            )
            return
        await self._receipt.nak(
            spec.delay_after(self._receipt.deliveries) if delay is None else delay
        )

    async def term(self, reason: str = "terminated by the handler") -> None:
        """Stop delivering this message; it goes to the dead-letter subject with ``reason``."""
        if not self._claim():
            return
        await self._sub._dead_letter(self._receipt, reason, "terminated", self._span)

    async def in_progress(self) -> None:
        """Still working: push back the ack deadline so no other member gets it."""
        if not self._settled:
            await self._receipt.touch()

    def _claim(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True


class Subscription:
    """A running consumer: fetches deliveries and runs the handler on them."""

    def __init__(
        self, bus: Bus, spec: ConsumerSpec, feed: Feed, handler: Handler, concurrency: int
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._feed = feed
        self._handler = handler
        self._concurrency = concurrency
        # Fetch again only once a quarter of the slots are free: one round trip
        # then brings a batch instead of one message per finished handler.
        self._low_water = max(1, concurrency // 4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._history: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._contexts: dict[
            tuple[str | None, ...],
            tuple[CallContext, InvalidContext | None, contextvars.Context],
        ] = {}
        self._runner: asyncio.Task[None] | None = None
        self._backlog: tuple[int | None, int | None] = (None, None)
        self._backlog_at = -_PENDING_TTL
        self._backlog_task: asyncio.Task[None] | None = None
        self.received = self.acked = self.failed = self.dead_lettered = 0

    @property
    def pattern(self) -> str:
        return self.spec.pattern

    @property
    def queue(self) -> str | None:
        return self.spec.name if self.spec.durable else None

    @property
    def in_flight(self) -> int:
        """Handlers running right now."""
        return len(self._tasks)

    async def pending(self) -> tuple[int | None, int | None]:
        """Ask the backend for this consumer's backlog: (waiting, unacked).

        ``waiting``: stored messages not yet delivered to the group;
        ``unacked``: delivered but not settled yet (in a handler, or waiting for
        a redelivery). ``None`` where the backend cannot tell cheaply.
        """
        self._backlog = await self._feed.pending()
        self._backlog_at = time.monotonic()
        return self._backlog

    def stats(self) -> dict[str, Any]:
        """Counters and the backlog, cheap and synchronous (for ``/metrics``).

        The backlog is the last figure :meth:`pending` got; one older than a
        second is refreshed in the background, so a scrape never waits on the
        backend and never costs more than one query a second.
        """
        self._refresh_backlog()
        waiting, unacked = self._backlog
        return {
            "consumer": self.spec.name,
            "pattern": self.spec.pattern,
            "queue": self.queue,
            "in_flight": len(self._tasks),
            "waiting": waiting,
            "unacked": unacked,
            "received": self.received,
            "acked": self.acked,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
        }

    def _refresh_backlog(self) -> None:
        if self._closing or self._backlog_task is not None:
            return
        if time.monotonic() - self._backlog_at < _PENDING_TTL:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a scrape from another thread: keep the last figure
            return
        self._backlog_task = loop.create_task(self._refresh_backlog_now())

    async def _refresh_backlog_now(self) -> None:
        try:
            await self.pending()
        except Exception as exc:  # backend down: the figure is unknown until it answers
            log.debug("bus consumer %s: backlog unavailable (%s)", self.spec.name, exc)
            self._backlog = (None, None)
            self._backlog_at = time.monotonic()
        finally:
            self._backlog_task = None

    def _start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"bus:{self.spec.name}")

    async def _run(self) -> None:
        pause = 0.05
        loop = asyncio.get_running_loop()
        tasks = self._tasks
        while not self._closing:
            await self._room.wait()
            free = self._concurrency - len(tasks)
            try:
                batch = await self._feed.fetch(free, max_wait=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # backend down: keep trying, do not die
                log.warning("bus consumer %s: fetch failed (%s); retrying", self.spec.name, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            if not batch:
                continue
            for receipt in batch:
                self.received += 1
                ctx, malformed, runs_in = self._context_for(receipt.headers)
                tasks.add(
                    loop.create_task(self._process(receipt, ctx, malformed), context=runs_in.copy())
                )
            # Let the handlers just started take their first step: quick ones finish
            # (and queue their acks) now, so the next fetch request leaves with the acks.
            await asyncio.sleep(0)
            if self._concurrency - len(tasks) < self._low_water:
                self._room.clear()

    def _release(self, task: asyncio.Task[Any] | None) -> None:
        tasks = self._tasks
        tasks.discard(task)
        if self._concurrency - len(tasks) >= self._low_water:
            self._room.set()

    def _context_for(
        self, headers: Mapping[str, str]
    ) -> tuple[CallContext, InvalidContext | None, contextvars.Context]:
        """A delivery's call context, and the contextvars its handler task runs in.

        Those are this consumer's own (what a task created here would copy) with
        the call context activated -- ours and OpenTelemetry's -- so the handler
        sees it as current without an ``activate()`` per message. Events of one
        trace share their carrier values: both are kept per distinct values.
        """
        key = tuple(map(headers.get, _CONTEXT_KEYS))
        ready = self._contexts.get(key)
        if ready is not None:
            return ready
        try:
            ctx, malformed = _decode_cached(key), None
        except InvalidContext as exc:  # not kept: the dead letter names this message's error
            return _NO_CONTEXT, exc, contextvars.copy_context().run(_activated, _NO_CONTEXT)
        ready = (ctx, malformed, contextvars.copy_context().run(_activated, ctx))
        if len(self._contexts) >= _CONTEXTS_KEPT:
            del self._contexts[next(iter(self._contexts))]
        self._contexts[key] = ready
        return ready

    async def _process(
        self, r: Receipt, ctx: CallContext, malformed: InvalidContext | None
    ) -> None:
        # Runs per message, in the context _context_for made (the call context is current).
        try:
            if not tracing_on():
                await self._deliver(r, ctx, malformed, None)
                return
            with process_span(
                self.bus.scheme,
                r.subject,
                r.headers,
                message_id=r.msg_id,
                consumer_group=self.queue,
                delivery_attempt=r.deliveries,
                ctx=ctx if malformed is None else None,
            ) as span:
                span.set("microhive.consumer", self.spec.name)
                await self._deliver(r, ctx, malformed, span)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(r.nak(0))
            raise
        except Exception:  # settling failed (backend down): the lease expires, redelivery
            log.exception("bus consumer %s: could not settle %s", self.spec.name, r.msg_id)
        finally:
            self._release(asyncio.current_task())

    async def _deliver(
        self,
        r: Receipt,
        ctx: CallContext,
        malformed: InvalidContext | None,
        span: TracedSpan | None,
    ) -> None:
        spec = self.spec
        if r.deliveries > spec.max_deliveries:
            reason = (
                f"max deliveries ({spec.max_deliveries}) reached; the last attempt did not finish"
            )
            return await self._dead_letter(r, reason, "max_deliveries", span)
        is_dlq = r.subject.startswith(DLQ_PREFIX)
        if malformed is not None and not is_dlq:  # dead letters are delivered as they are
            reason = f"malformed headers: {malformed.message}"
            return await self._dead_letter(r, reason, malformed.code, span, malformed)
        if not is_dlq:
            try:
                ctx.check()
            except Stop as exc:
                return await self._dead_letter(r, exc.message, exc.code, span, exc)
            if r.headers.get(CONTENT_TYPE) == "application/json":
                try:
                    json.loads(r.data)
                except ValueError as exc:
                    reason = f"malformed payload: invalid JSON ({exc})"
                    return await self._dead_letter(r, reason, "invalid_input", span)
        delivery = Delivery(self, r, ctx, span)
        try:
            await self._handler(delivery)
        except (InvalidInput, Stop) as exc:
            self._record(r, exc)
            if not delivery._claim():
                return
            await self._dead_letter(r, f"{exc.code}: {exc.message}", exc.code, span, exc)
        except Exception as exc:
            self.failed += 1
            self._record(r, exc)
            if not delivery._claim():
                if span is not None:
                    span.fail(exc)
                return
            if r.deliveries >= spec.max_deliveries:
                reason = (
                    f"max deliveries ({spec.max_deliveries}) reached; last error: {_describe(exc)}"
                )
                await self._dead_letter(r, reason, "max_deliveries", span, exc)
            else:
                if span is not None:
                    span.fail(exc)  # this attempt failed; the next one is another span
                await r.nak(spec.delay_after(r.deliveries))
        else:
            if delivery._claim():
                await r.ack()
                self.acked += 1

    def _record(self, r: Receipt, exc: BaseException) -> None:
        attempts = self._history.setdefault(r.sequence, [])
        self._history.move_to_end(r.sequence)
        attempts.append(
            {
                "attempt": r.deliveries,
                "at": round(time.time(), 3),
                "member": self.member,
                "error": _describe(exc),
            }
        )
        while len(self._history) > _HISTORY_TRACKED:
            self._history.popitem(last=False)

    async def _dead_letter(
        self,
        r: Receipt,
        reason: str,
        code: str,
        span: TracedSpan | None = None,
        error: BaseException | None = None,
    ) -> None:
        mark_dead_letter(span, reason, code, error)
        history = self._history.pop(r.sequence, [])[-_HISTORY_KEEP:]
        if r.subject.startswith(DLQ_PREFIX):
            # A dead letter its own consumer cannot handle stays where it is (in the
            # log, readable by `microhive events dlq`); re-dead-lettering would loop.
            await r.term()
            log.error(
                "dead letter %s on %s not handled by %s: %s",
                r.msg_id,
                r.subject,
                self.spec.name,
                reason,
            )
            return
        headers = dict(r.headers)
        headers.update(
            {
                "microhive-dlq-reason": reason.replace("\r", " ").replace("\n", " ")[:1000],
                "microhive-dlq-code": code,
                "microhive-dlq-subject": r.subject,
                "microhive-dlq-sequence": str(r.sequence),
                "microhive-dlq-msg-id": r.msg_id,
                "microhive-dlq-consumer": self.spec.name,
                "microhive-dlq-deliveries": str(r.deliveries),
                "microhive-dlq-at": repr(time.time()),
                "microhive-dlq-history": json.dumps(history, separators=(",", ":"))[:4000],
            }
        )
        dlq_id = f"dlq:{self.spec.name}:{r.msg_id}"[:256]
        headers[HEADER_MSG_ID] = dlq_id
        await self.bus._store(DLQ_PREFIX + r.subject, r.data, headers, dlq_id)
        await r.term()
        self.dead_lettered += 1
        log.warning("dead-lettered %s on %s: %s", r.msg_id, r.subject, reason)

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop fetching, let running handlers finish (up to ``grace`` s), release the feed."""
        if self._closing:
            return
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._backlog_task is not None:
            self._backlog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._backlog_task
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
            self._tasks.clear()  # a task cancelled before its first step never released its slot
        await self._feed.aclose(delete=not self.spec.durable)
        self.bus._subscriptions.discard(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


CONTEXT_HEADERS = frozenset(
    ("traceparent", "tracestate", HEADER_HOPS, HEADER_MAX_HOPS, HEADER_DEADLINE,
     HEADER_BUDGET_STEPS, HEADER_BUDGET_TOKENS)
)  # fmt: skip
_CONTEXT_KEYS = tuple(sorted(CONTEXT_HEADERS))


@functools.lru_cache(maxsize=1024)
def _decode_cached(values: tuple[str | None, ...]) -> CallContext:
    return CallContext.from_headers(
        {k: v for k, v in zip(_CONTEXT_KEYS, values, strict=True) if v is not None}
    )


def _activated(ctx: CallContext) -> contextvars.Context:
    """The current contextvars with ``ctx`` active (call it inside a copy it may change)."""
    with ctx.activate():
        return contextvars.copy_context()


def _with_parent(ctx: CallContext, span: TracedSpan) -> CallContext:
    """``ctx`` with ``span`` as its trace parent: what the handler's ``msg.context`` says."""
    carrier: dict[str, str] = {}
    span.inject(carrier)
    return replace(ctx, trace=carrier) if carrier else ctx


def _describe(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__
