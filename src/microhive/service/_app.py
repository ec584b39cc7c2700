"""`Service`: the builder a service author uses to make a microhive ASGI app.

A factory gets a :class:`~microhive.service.ServiceContext`, builds a
:class:`Service`, adds routes, readiness checks and start-up/shut-down hooks,
and returns it. :meth:`Service.asgi` turns it into a Starlette app that always
has ``/healthz``, ``/readyz`` and ``/metrics`` and the standard middleware chain
(see :mod:`microhive.service._middleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message

from microhive.errors import MicrohiveError, UsageError
from microhive.service._context import ServiceContext
from microhive.service._errors import json_error
from microhive.service._metrics import ServiceMetrics
from microhive.service._middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    CallContextMiddleware,
    ObserveMiddleware,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Hook", "ReadyCheck", "Service"]

#: A readiness check: raises (or returns ``False``) when its dependency is not usable.
ReadyCheck = Callable[[], Awaitable[object]]
#: A start-up or shut-down hook.
Hook = Callable[[], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_log = logging.getLogger("microhive.service")
Phase = Literal["new", "starting", "running", "stopping"]


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    fn: ReadyCheck
    timeout: float


class Service:
    """A microhive service under construction; :meth:`asgi` makes the app.

    Build it from the factory's context (``Service(ctx)``), or stand-alone with
    a name for tests and embedding (``Service(name="echo")``). Explicit keyword
    arguments override what the context says. Server spans go to
    ``tracer_provider``, else to the global OpenTelemetry provider (a no-op until
    one is set).
    """

    def __init__(
        self,
        ctx: ServiceContext | None = None,
        *,
        name: str | None = None,
        replica: int | None = None,
        token: str | None = None,
        max_body_bytes: int | None = None,
        grace_period: float | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if ctx is None and name is None:
            raise UsageError("Service needs a ServiceContext or a name=")
        self.ctx = ctx
        self.name: str = name if name is not None else ctx.name  # type: ignore[union-attr]
        self.replica: int = replica if replica is not None else (ctx.replica if ctx else 0)
        self.token: str | None = token if token is not None else (ctx.token if ctx else None)
        self.max_body_bytes: int = max_body_bytes or (
            ctx.spec.max_body_bytes if ctx else DEFAULT_MAX_BODY_BYTES
        )
        self.grace_period: float = grace_period or (ctx.spec.grace_period if ctx else 10.0)
        self.tracer_provider = tracer_provider
        self.metrics = ServiceMetrics()
        self.logger = logging.getLogger(f"microhive.service.{self.name}")
        self._routes: list[BaseRoute] = []
        self._lifespan_apps: list[ASGIApp] = []
        self._middleware: list[Middleware] = []
        self._protocol_paths: list[str] = []
        self._checks: list[_Check] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._app: Starlette | None = None
        self._phase: Phase = "new"
        self._born = time.monotonic()
        #: Why the last start-up failed (set by :meth:`running`), else ``None``.
        self.startup_error: BaseException | None = None

    @classmethod
    def wrap(cls, app: ASGIApp, ctx: ServiceContext | None = None, **kwargs: Any) -> Service:
        """A service serving a plain ASGI ``app`` (and its lifespan) with the standard endpoints."""
        service = cls(ctx, **kwargs)
        service.mount("", app)
        return service

    # ------------------------------------------------------------ building

    def route(
        self, path: str, methods: Sequence[str] = ("GET",), *, name: str | None = None
    ) -> Callable[[Callable[[Request], Any]], Callable[[Request], Any]]:
        """Decorator: handle ``path``. The handler may return a Response or JSON-able data."""

        def register(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
            self.add_route(path, fn, methods, name=name)
            return fn

        return register

    def add_route(
        self,
        path: str,
        endpoint: Callable[[Request], Any],
        methods: Sequence[str] = ("GET",),
        *,
        name: str | None = None,
    ) -> None:
        """Handle ``path`` with ``endpoint`` (async or plain; plain runs in a thread)."""
        self._mutable()
        self._routes.append(
            Route(
                path, _as_endpoint(endpoint), methods=list(methods), name=name or endpoint.__name__
            )
        )

    def add_routes(self, routes: Iterable[BaseRoute]) -> None:
        """Add ready-made Starlette routes (``Route``, ``Mount``, ``WebSocketRoute``...)."""
        self._mutable()
        self._routes.extend(routes)

    def mount(self, path: str, app: ASGIApp, *, lifespan: bool = True) -> None:
        """Serve an ASGI ``app`` under ``path`` (``""``: everything not otherwise routed).

        With ``lifespan=True`` the app's own start-up and shut-down run with the
        service's (Starlette does not forward lifespan to mounted apps by itself).
        """
        self._mutable()
        self._routes.append(Mount(path, app=app))
        if lifespan:
            self._lifespan_apps.append(app)

    def add_middleware(self, middleware: Callable[..., ASGIApp], **options: Any) -> None:
        """Add an ASGI middleware inside the standard chain (after auth, limits, context)."""
        self._mutable()
        self._middleware.append(Middleware(middleware, **options))

    def add_protocol_path(self, prefix: str) -> None:
        """Requests under ``prefix`` speak a protocol that has its own server span (MCP).

        They get an HTTP server span only when the caller sent a ``traceparent``
        header; otherwise the protocol's span (``tools/call``, parented from
        ``params._meta``) is the only one, instead of an orphan trace per request.
        """
        self._mutable()
        self._protocol_paths.append(prefix)

    def add_ready_check(self, name: str, check: ReadyCheck, *, timeout: float = 5.0) -> None:
        """``/readyz`` answers 200 only while every check passes; each is reported by name."""
        if any(c.name == name for c in self._checks):
            raise UsageError(f"service {self.name!r} already has a ready check named {name!r}")
        self._checks.append(_Check(name, check, timeout))

    def on_startup(self, hook: Hook) -> Hook:
        """Run ``hook`` before the service takes requests (usable as a decorator)."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Run ``hook`` after in-flight requests finished; hooks run last-added first."""
        self._shutdown.append(hook)
        return hook

    # ------------------------------------------------------------- running

    @property
    def registry(self) -> Any:
        """The service's own Prometheus registry (a ``CollectorRegistry``)."""
        return self.metrics.registry

    @property
    def draining(self) -> bool:
        """True once shut-down has begun: ``/readyz`` answers 503 from then on."""
        return self._phase == "stopping"

    def begin_shutdown(self) -> None:
        """Mark the service as going away (the runner calls this on SIGTERM/SIGINT)."""
        self._phase = "stopping"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[dict[str, Any]]:
        """Start-up hooks and mounted apps' lifespans around the block, shut-down after.

        Yields the lifespan state the mounted apps set (Starlette puts it on
        ``request.state``). Used as the ASGI lifespan; also usable directly to run
        the service in-process. If starting fails, the error is kept in
        :attr:`startup_error` and re-raised; a :class:`MicrohiveError` (an expected
        failure such as a missing API key) is also logged as one line, its message,
        without a traceback.
        """
        self._phase = "starting"
        self.startup_error = None
        state: dict[str, Any] = {}
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    for app in self._lifespan_apps:
                        state.update(await stack.enter_async_context(_app_lifespan(app)))
                    for hook in self._startup:
                        await hook()
                except MicrohiveError as exc:
                    # Expected (a missing key, a bad setting): one line saying what to
                    # fix, not a traceback. Anything else is the server's to log.
                    self.startup_error = exc
                    _log.error("%s", exc.message, extra={"error": exc.code})
                    raise
                except BaseException as exc:
                    self.startup_error = exc
                    raise
                self._phase = "running"
                try:
                    yield state
                finally:
                    self._phase = "stopping"
                    for hook in reversed(self._shutdown):
                        try:
                            await hook()
                        except Exception:
                            self.logger.exception("shutdown hook %r failed", hook)
        finally:
            self._phase = "stopping"

    async def check_ready(self) -> tuple[bool, list[dict[str, Any]]]:
        """Run every ready check concurrently: (all passed, one report per check)."""

        async def one(check: _Check) -> dict[str, Any]:
            try:
                result = await asyncio.wait_for(check.fn(), check.timeout)
            except TimeoutError:
                return {"name": check.name, "ok": False, "error": f"no answer in {check.timeout}s"}
            except Exception as exc:
                return {"name": check.name, "ok": False, "error": _describe(exc)}
            if result is False:
                return {"name": check.name, "ok": False, "error": "check returned False"}
            return {"name": check.name, "ok": True, "error": None}

        reports = list(await asyncio.gather(*(one(c) for c in self._checks)))
        return all(r["ok"] for r in reports), reports

    # ---------------------------------------------------------------- app

    def asgi(self) -> Starlette:
        """The ASGI app (built once; the service cannot gain routes afterwards)."""
        if self._app is not None:
            return self._app
        chain = [Middleware(ObserveMiddleware, metrics=self.metrics)]
        if self.token:
            chain.append(Middleware(AuthMiddleware, token=self.token))
        chain += [
            Middleware(BodyLimitMiddleware, max_body_bytes=self.max_body_bytes),
            Middleware(
                CallContextMiddleware,
                service=self.name,
                tracer_provider=self.tracer_provider,
                protocol_paths=self._protocol_paths,
            ),
            *self._middleware,
        ]
        routes: list[BaseRoute] = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            *self._routes,
        ]

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
            async with self.running() as state:
                yield state

        self._app = Starlette(
            routes=routes,
            middleware=chain,
            lifespan=lifespan,
            exception_handlers={HTTPException: _http_exception},
        )
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """A Service is itself an ASGI app (the one :meth:`asgi` builds)."""
        await self.asgi()(scope, receive, send)

    # ---------------------------------------------------------- endpoints

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "service": self.name,
                "replica": self.replica,
                "pid": os.getpid(),
                "uptime": round(time.monotonic() - self._born, 3),
            }
        )

    async def _readyz(self, request: Request) -> Response:
        body: dict[str, Any] = {"service": self.name, "replica": self.replica}
        if self._phase == "stopping":
            body.update(status="shutting_down", checks=[])
            return JSONResponse(body, status_code=503)
        if self._phase == "starting":
            body.update(status="starting", checks=[])
            return JSONResponse(body, status_code=503)
        ok, reports = await self.check_ready()
        body.update(status="ready" if ok else "not_ready", checks=reports)
        if not ok:
            failing = ", ".join(r["name"] for r in reports if not r["ok"])
            body["message"] = f"not ready: {failing}"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    def _mutable(self) -> None:
        if self._app is not None:
            raise UsageError(f"service {self.name!r} is already built; add routes before asgi()")


def _as_endpoint(fn: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
    is_async = inspect.iscoroutinefunction(fn)

    async def endpoint(request: Request) -> Response:
        result = await fn(request) if is_async else await run_in_threadpool(fn, request)
        return result if isinstance(result, Response) else JSONResponse(result)

    endpoint.__name__ = getattr(fn, "__name__", "endpoint")
    endpoint.__doc__ = fn.__doc__
    return endpoint


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return json_error(exc.status_code, code, str(exc.detail), headers=exc.headers)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= 300 else out[:297] + "..."


@contextlib.asynccontextmanager
async def _app_lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Drive the ASGI lifespan protocol of a mounted app around the block.

    An app that does not speak lifespan (it fails or returns on the lifespan
    scope before saying "startup complete") is run without one, as uvicorn's
    ``lifespan="auto"`` does.
    """
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}

    async def run() -> None:
        await app(scope, to_app.get, from_app.put)

    task = asyncio.create_task(run())

    async def answer() -> Message | None:
        getter = asyncio.create_task(from_app.get())
        done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if not task.cancelled():
            task.exception()  # retrieved: an app without lifespan support may raise here
        return None

    await to_app.put({"type": "lifespan.startup"})
    started = await answer()
    if started is None:
        yield {}
        return
    if started["type"] == "lifespan.startup.failed":
        await asyncio.gather(task, return_exceptions=True)
        raise RuntimeError(f"mounted app failed to start: {started.get('message', '')}")
    try:
        yield state
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await answer()
        if stopped is not None and stopped["type"] == "lifespan.shutdown.failed":
            logging.getLogger("microhive.service").error(
                "mounted app failed to shut down: %s", stopped.get("message", "")
            )
        await asyncio.gather(task, return_exceptions=True)
