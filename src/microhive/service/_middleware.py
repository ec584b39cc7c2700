"""The middleware every service runs, as a chain of plain ASGI callables.

Outermost first::

    ObserveMiddleware       metrics (count, latency, in-flight, errors) + one access-log line
    AuthMiddleware          bearer token (only when the mesh configures one)
    BodyLimitMiddleware     413 for a body over the limit, declared or streamed
    CallContextMiddleware   decode + check the call context, activate it, server span,
                            map errors to JSON responses
    ...the service's own middleware and routes

Each is a pure ASGI middleware (``__call__(scope, receive, send)`` calling the
next app), not Starlette's ``BaseHTTPMiddleware``: no extra task per request, no
buffering, streaming responses pass straight through. Middlewares talk to the
ones outside them through a few ``scope`` keys (``microhive.error``,
``microhive.trace_id``), never through globals.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from microhive.context import CallContext
from microhive.errors import Cancelled, InvalidContext, MicrohiveError, PayloadTooLarge, Stop
from microhive.service._errors import error_response, json_error, status_for
from microhive.service._metrics import ServiceMetrics
from microhive.tracing import context_attributes, new_span_id, new_trace_id, record_error

__all__ = [
    "PROBE_PATHS",
    "SERVICE_PATHS",
    "AuthMiddleware",
    "BodyLimitMiddleware",
    "CallContextMiddleware",
    "ObserveMiddleware",
    "route_template",
]

#: Paths a probe (supervisor, kubelet) calls without a token and without a call context.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
#: Paths the runtime itself serves; they skip the call-context middleware.
SERVICE_PATHS = PROBE_PATHS | {"/metrics"}

ERROR_KEY = "microhive.error"
TRACE_KEY = "microhive.trace_id"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_access_log = logging.getLogger("microhive.access")


def route_template(scope: Scope) -> str:
    """The matched route's template (``/files/{path}``), never the raw path.

    Metrics labels must have few values; raw paths would make one series per URL.
    """
    route = scope.get("route")
    root = str(scope.get("root_path", "")).rstrip("/")
    if route is None:
        return "<unmatched>"
    if isinstance(route, Mount):
        return root + "/*"
    path_format = getattr(route, "path_format", None)
    if isinstance(path_format, str):
        return root + path_format or "/"
    return "<other>"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _trace_id_from_headers(scope: Scope) -> str | None:
    raw = _header(scope, b"traceparent")
    if raw is None:
        return None
    parts = raw.decode("latin-1").strip().split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1].lower()
    return None


# --------------------------------------------------------------------- observe


class ObserveMiddleware:
    """Counts and times every HTTP request and writes one access-log line for it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        quiet_paths: Iterable[str] = SERVICE_PATHS,
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Probes arrive every second or so; their lines go to DEBUG so the log stays readable.
        self.quiet_paths = frozenset(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        failed: str | None = None
        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            failed = "internal"
            raise
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            if status == 0:  # nothing was sent: the app crashed or was cancelled
                status = 500
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            error = scope.get(ERROR_KEY) or failed
            self.metrics.observe(method, route_template(scope), status, seconds, error)
            self._log(scope, status, seconds)

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        path = scope["path"]
        level = logging.DEBUG if path in self.quiet_paths and status < 500 else logging.INFO
        if not _access_log.isEnabledFor(level):
            return
        duration_ms = round(seconds * 1000, 3)
        _access_log.log(
            level,
            "%s %s %d %.1fms",
            scope["method"],
            path,
            status,
            duration_ms,
            extra={
                "method": scope["method"],
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
                "trace_id": scope.get(TRACE_KEY) or _trace_id_from_headers(scope),
            },
        )


# ------------------------------------------------------------------------ auth


class AuthMiddleware:
    """Requires ``Authorization: Bearer <token>`` on everything but the probe paths."""

    def __init__(self, app: ASGIApp, *, token: str, exempt: Iterable[str] = PROBE_PATHS) -> None:
        if not token:
            raise ValueError("AuthMiddleware needs a non-empty token")
        self.app = app
        self._token = token.encode()
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        problem = self._problem(_header(scope, b"authorization"))
        if problem is None:
            await self.app(scope, receive, send)
            return
        scope[ERROR_KEY] = "unauthorized"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem})
            return
        challenge = 'Bearer realm="microhive"'
        if problem != "missing bearer token":
            challenge += ', error="invalid_token"'
        response = json_error(401, "unauthorized", problem, {"www-authenticate": challenge})
        await response(scope, receive, send)

    def _problem(self, raw: bytes | None) -> str | None:
        if raw is None:
            return "missing bearer token"
        scheme, _, given = raw.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return "expected 'Authorization: Bearer <token>'"
        # Constant-time: the comparison must not tell an attacker how much was right.
        if not hmac.compare_digest(given.strip(), self._token):
            return "wrong bearer token"
        return None


# ------------------------------------------------------------------ body limit


class BodyLimitMiddleware:
    """Refuses bodies over ``max_body_bytes`` with 413, before or while reading them.

    A declared ``Content-Length`` over the limit is answered at once, unread. A
    body without one (chunked) is counted as the handler reads it; the read that
    crosses the limit raises :class:`PayloadTooLarge`, and whatever the handler
    answers after that is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                scope[ERROR_KEY] = "invalid_input"
                response = json_error(
                    400, "invalid_input", f"content-length: expected a byte count, got {declared!r}"
                )
                await response(scope, receive, send)
                return
            if length > self.limit:
                await self._too_large(scope, receive, send)
                return
            # The HTTP server enforces a declared length, so nothing more to count.
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        overflow = started = False

        async def counting_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    overflow = True
                    raise PayloadTooLarge(self._message())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow and not started:
                return  # the handler's answer after an overflow is replaced by our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not overflow or started:
                raise
        if overflow and not started:
            await self._too_large(scope, receive, send)

    def _message(self) -> str:
        return f"request body is larger than this service accepts ({self.limit} bytes)"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[ERROR_KEY] = PayloadTooLarge.code
        # Close the connection: the rest of the body is never read.
        response = json_error(413, PayloadTooLarge.code, self._message(), {"connection": "close"})
        await response(scope, receive, send)


# ---------------------------------------------------------------- call context


class CallContextMiddleware:
    """Runs each request inside its call context and a server span; errors become JSON.

    The context is decoded from the headers (a malformed value is a 400 naming
    the header), activated (so ``CallContext.current()`` and every log line in
    the handler see it), and checked inside the span: a request out of hops
    (508), time (504) or budget (429) is refused and recorded on the trace.

    The span follows the HTTP server conventions of :func:`microhive.tracing.server_span`:
    ``{METHOD} {route}``, ``http.request.method``, ``http.route``,
    ``http.response.status_code``, the call context's hops, deadline and budget,
    and ``error.type`` (our error code) on failure; a stop becomes its span event.
    Requests under a ``protocol_paths`` prefix (MCP endpoints) get no HTTP span
    unless the caller sent a ``traceparent``: the protocol's own server span,
    parented from the message (``params._meta``), stands for them instead of an
    orphan trace per request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        exempt: Iterable[str] = SERVICE_PATHS,
        tracer_provider: trace.TracerProvider | None = None,
        protocol_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.service = service
        self.exempt = frozenset(exempt)
        self.protocol_paths = tuple(protocol_paths)
        # Without a provider this is OpenTelemetry's proxy: a no-op until one is set globally.
        self.tracer = trace.get_tracer("microhive.service", tracer_provider=tracer_provider)
        self.log = logging.getLogger(f"microhive.service.{service}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        try:
            ctx = CallContext.from_headers(headers)
        except InvalidContext as exc:
            scope[ERROR_KEY] = exc.code
            self.log.info("refused %s %s: %s", scope["method"], scope["path"], exc.message)
            await error_response(exc)(scope, receive, send)
            return
        method = scope["method"]
        if (
            self.protocol_paths
            and "traceparent" not in headers
            and scope["path"].startswith(self.protocol_paths)
        ):
            with ctx.activate():
                await self._handle(ctx, INVALID_SPAN, scope, receive, send)
            return
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope["path"],
            **context_attributes(ctx),
        }
        with (
            ctx.activate(),
            self.tracer.start_as_current_span(
                method, kind=SpanKind.SERVER, attributes=attributes, record_exception=False
            ) as span,
        ):
            if span.get_span_context().is_valid:
                await self._handle(ctx, span, scope, receive, send)
            else:
                # No tracer provider and no incoming trace: start a trace id of our
                # own so logs and onward calls can still be tied together.
                ctx = replace(ctx, trace={"traceparent": _new_traceparent()})
                with ctx.activate():
                    await self._handle(ctx, span, scope, receive, send)

    async def _handle(
        self, ctx: CallContext, span: Span, scope: Scope, receive: Receive, send: Send
    ) -> None:
        current = trace.get_current_span().get_span_context()
        trace_id = format(current.trace_id, "032x") if current.is_valid else ctx.trace_id
        scope[TRACE_KEY] = trace_id
        started = False

        async def traced_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500 and scope.get(ERROR_KEY) is None:
                    # a handler's own 5xx answer (errors we map are recorded below)
                    span.set_attribute("error.type", str(status))
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            await send(message)

        try:
            ctx.check()
            await self.app(scope, receive, traced_send)
        except MicrohiveError as exc:
            status = status_for(exc)
            scope[ERROR_KEY] = exc.code
            span.set_attribute("microhive.error", exc.code)
            if status >= 500 or isinstance(exc, Stop):
                # a server fault, or a stop (hops, deadline, budget): its event + ERROR
                record_error(exc, span=span)
            else:
                span.set_attribute("error.type", exc.code)  # the caller's mistake, not ours
            level = logging.WARNING if status >= 500 else logging.INFO
            self.log.log(
                level,
                "%s %s -> %d %s: %s",
                scope["method"],
                scope["path"],
                status,
                exc.code,
                exc.message,
                extra={"error": exc.code},
            )
            if not started:
                await error_response(exc)(scope, receive, traced_send)
        except asyncio.CancelledError:
            # The server cut the request off (grace period over): say so, then let it end.
            scope[ERROR_KEY] = Cancelled.code
            span.set_attribute("microhive.error", Cancelled.code)
            span.set_attribute("error.type", Cancelled.code)
            span.set_status(Status(StatusCode.ERROR, "cut off by shut-down"))
            self.log.warning("%s %s cut off by shut-down", scope["method"], scope["path"])
            if not started:
                gone = Cancelled(f"service {self.service!r} shut down before the request finished")
                response = error_response(gone)
                response.headers["connection"] = "close"
                await response(scope, receive, traced_send)
            raise
        except Exception as exc:
            scope[ERROR_KEY] = "internal"
            record_error(exc, span=span)
            self.log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not started:
                message = f"internal error in service {self.service!r}"
                if trace_id:
                    message += f"; its log has the details under trace_id {trace_id}"
                await json_error(500, "internal", message)(scope, receive, traced_send)
        finally:
            route = route_template(scope)
            span.update_name(f"{scope['method']} {route}")
            span.set_attribute("http.route", route)


def _new_traceparent() -> str:
    # laid out like the tracer provider's ids (clock first), in case a traced hop follows
    return f"00-{new_trace_id():032x}-{new_span_id():016x}-01"
