"""Running one service process: resolve its factory, bind, serve, shut down gracefully.

:func:`serve_service` is what ``microhive serve NAME`` and the supervisor's
child processes run. It never lets a traceback be the error message: a bad mesh
file, an unknown service, a bad ``app:`` path, or any other
:class:`~microhive.errors.UsageError` raised by the factory or a start-up hook
(a model's missing API key, a missing optional dependency, a bad setting) is one
clear log line and exit code 78 (``EX_CONFIG``), which the supervisor does not
retry; a port already in use is exit code 3; any other failure of the factory or
a start-up hook is exit code 1 (a :class:`~microhive.errors.MicrohiveError` as
one line, anything unexpected with its traceback).

Shut-down on SIGTERM or SIGINT, in order: ``/readyz`` answers 503 at once; the
listening socket closes (new connections are refused); in-flight requests get up
to the grace period to finish (uvicorn's ``timeout_graceful_shutdown``); then
shut-down hooks run, the port file is removed and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from microhive.config import SERVICE_KINDS, ServiceSpec, load_config
from microhive.errors import ConfigError, MicrohiveError, UsageError
from microhive.service._app import Service
from microhive.service._context import DEFAULT_HOST, ServiceContext
from microhive.service._logging import configure_logging
from microhive.tracing import TracingHandle, setup_tracing

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_PORT_IN_USE",
    "ServiceFactory",
    "build_service",
    "resolve_factory",
    "run_app",
    "serve_service",
    "settle_heap",
]

EXIT_OK = 0
#: The factory, a start-up hook or the server failed.
EXIT_FAILURE = 1
#: A configuration error (sysexits' ``EX_CONFIG``): the mesh file, the service name,
#: its ``app:`` path or settings, a model's API key or SDK. Restarting cannot help.
EXIT_CONFIG = 78
#: The address could not be bound (most often: the port is in use).
EXIT_PORT_IN_USE = 3

#: Net new container objects between young-generation collections (CPython's default: 700).
_GC_YOUNG_THRESHOLD = 10_000

ServiceFactory = Callable[[ServiceContext], Any]

log = logging.getLogger("microhive.service")


# ------------------------------------------------------------------ factories


def resolve_factory(spec: ServiceSpec, name: str = "?", file: str | None = None) -> ServiceFactory:
    """Import the factory of a service: its ``app:`` path, else its kind's default.

    Every way this can go wrong is a :class:`ConfigError` naming the field.
    """
    target = spec.app or SERVICE_KINDS.get(spec.kind)
    field = f"services.{name}.app" if spec.app else f"services.{name}.kind"
    if target is None:
        raise ConfigError(
            f"kind {spec.kind!r} runs a command, not an ASGI app; the supervisor runs it itself",
            file=file,
            field=f"services.{name}.kind",
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"cannot import {module_name!r} for {target!r}: no such module "
                f"(is it installed, or in the mesh file's folder or on PYTHONPATH?)",
                file=file,
                field=field,
            ) from None
        raise ConfigError(
            f"importing {module_name!r} for {target!r} failed: {exc}", file=file, field=field
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} for {target!r} failed: {type(exc).__name__}: {exc}",
            file=file,
            field=field,
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(
            f"module {module_name!r} has no attribute {attr!r} (from {target!r})",
            file=file,
            field=field,
        )
    if not callable(factory):
        raise ConfigError(
            f"{target!r} is not callable; expected a factory taking a ServiceContext",
            file=file,
            field=field,
        )
    return factory  # type: ignore[no-any-return]


def build_service(factory: ServiceFactory, ctx: ServiceContext) -> Service:
    """Call the factory; a plain ASGI app it returns is wrapped in a :class:`Service`."""
    made = factory(ctx)
    if isinstance(made, Service):
        return made
    if asyncio.iscoroutine(made):
        made.close()
        raise ConfigError(
            "the factory is a coroutine function; make it a plain 'def' returning a Service "
            "(use service.on_startup for async set-up)",
            file=str(ctx.config_path) if ctx.config_path else None,
            field=f"services.{ctx.name}.app",
        )
    if not callable(made):
        raise ConfigError(
            f"the factory returned {type(made).__name__}, expected a Service or an ASGI app",
            file=str(ctx.config_path) if ctx.config_path else None,
            field=f"services.{ctx.name}.app",
        )
    return Service.wrap(made, ctx)


# -------------------------------------------------------------------- serving


def serve_service(
    config_path: str | Path | None,
    name: str,
    replica: int = 0,
    port: int | None = None,
    host: str | None = None,
) -> int:
    """Run replica ``replica`` of service ``name`` of a mesh until SIGTERM; the exit code."""
    configure_logging(name, replica, os.environ.get("MICROHIVE_LOG_LEVEL", "INFO"))
    try:
        mesh_path = Path(config_path) if config_path is not None else None
        mesh = load_config(mesh_path)
        file = str(mesh_path) if mesh_path is not None else None
        ctx = ServiceContext.from_mesh(mesh, name, replica, port, host, config_path=mesh_path)
        # Like `python -m`, let the project's own modules be imported by `app:`.
        folder = str((mesh_path.parent if mesh_path else Path()).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
        factory = resolve_factory(ctx.spec, name, file)
    except MicrohiveError as exc:
        _start_failed(exc)
        return EXIT_CONFIG
    try:
        tracing = _start_tracing(ctx)
    except MicrohiveError as exc:
        _start_failed(exc)
        return EXIT_CONFIG
    try:
        try:
            service = build_service(factory, ctx)
        except MicrohiveError as exc:
            _start_failed(exc)
            return EXIT_CONFIG if isinstance(exc, UsageError) else EXIT_FAILURE
        except Exception:
            log.exception("the factory of service %r failed", name)
            return EXIT_FAILURE
        return run_app(
            service,
            host=ctx.host,
            port=ctx.port or 0,
            grace_period=ctx.spec.grace_period,
            port_file=ctx.port_file,
        )
    finally:
        # Flushes what is still queued, so the last requests' spans reach the store.
        tracing.close()


def _start_failed(exc: MicrohiveError) -> None:
    """The one log line of an expected start-up failure: the error's own message."""
    log.error("%s", exc.message, extra={"error": exc.code})


def _start_tracing(ctx: ServiceContext) -> TracingHandle:
    """This process's tracer provider, installed as the global one before the factory runs.

    Everything the service does -- the server span of each request, model and tool
    calls, the factory's own start-up work -- then goes to the mesh's trace store
    (``stores.traces``, relative to the mesh file's folder) and to OTLP if set.
    """
    base_dir = ctx.config_path.parent if ctx.config_path is not None else None
    handle = setup_tracing(ctx.name, ctx.replica, ctx.mesh, base_dir=base_dir)
    handle.install()
    return handle


def run_app(
    app: Service | Any,
    host: str = DEFAULT_HOST,
    port: int = 0,
    grace_period: float = 10.0,
    *,
    port_file: str | Path | None = None,
    on_ready: Callable[[str, int], None] | None = None,
) -> int:
    """Serve ``app`` (a Service or a plain ASGI app) until SIGTERM/SIGINT; the exit code.

    ``port=0`` binds a free port; the real one is logged (``ready on
    http://host:port``), written to ``port_file`` and passed to ``on_ready``.
    Signals are handled only when called from the main thread.
    """
    service = app if isinstance(app, Service) else Service.wrap(app, name="app")
    try:
        sock = _bind(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = (
                f"port {port} on {host} is already in use by another process; "
                "stop it or choose another port (services.<name>.port in microhive.yaml)"
            )
        else:
            reason = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        log.error("cannot start service %r: %s", service.name, reason, extra={"error": "bind"})
        return EXIT_PORT_IN_USE
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        service.asgi(),
        host=host,
        port=bound_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=grace_period,  # type: ignore[arg-type]  # float seconds work
        server_header=False,
        # "auto": httptools and uvloop when installed (core dependencies), else h11 and
        # asyncio; about 15% less CPU per request for an MCP tool service
        http="auto",
        loop="auto",
    )
    server = _Server(config, service, port_file=Path(port_file) if port_file else None)
    server.on_ready = on_ready
    quiet = _ReportedStartupFailure(service)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))
    except SystemExit as exc:  # uvicorn exits this way when the lifespan start-up fails
        failure = service.startup_error
        if isinstance(failure, MicrohiveError):  # Service.running() logged it: one line
            return EXIT_CONFIG if isinstance(failure, UsageError) else EXIT_FAILURE
        log.error("service %r failed to start (see above)", service.name)
        return EXIT_FAILURE if exc.code not in (0, None) else EXIT_OK
    finally:
        uvicorn_log.removeFilter(quiet)
        sock.close()
        server.remove_port_file()
    log.info("service %r stopped", service.name)
    return EXIT_OK


def settle_heap() -> None:
    """Tune the cyclic garbage collector for a long-running service; called once it is up.

    Profiling a busy gateway found about a fifth of its CPU in CPython's cyclic
    collector: every full collection walked the ~110k objects start-up leaves
    behind (modules, the app, pydantic schemas), which never become garbage, and
    young collections ran every 700 allocations, several times per request.
    So, once start-up is done: collect its garbage, then ``gc.freeze()`` what is
    left (the collector stops walking it; reference counting still frees it), and
    let the young generation grow to :data:`_GC_YOUNG_THRESHOLD` objects before
    it is collected, so most of a request's objects are freed by reference
    counting before a collection ever looks at them. ``MICROHIVE_GC_TUNING=0``
    keeps CPython's defaults.
    """
    if os.environ.get("MICROHIVE_GC_TUNING", "1").strip() == "0":
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, older, oldest)


class _ReportedStartupFailure(logging.Filter):
    """Drops uvicorn's error lines about a start-up failure the service already logged.

    For an expected error (a :class:`MicrohiveError`) :meth:`Service.running` has
    logged one line saying what to fix; uvicorn would add the traceback Starlette
    formatted, as one JSON-escaped string, and a generic "startup failed" line.
    """

    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR
            and isinstance(self.service.startup_error, MicrohiveError)
        )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts so errors and port 0 are ours to handle."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, told about our service's readiness and our port file."""

    def __init__(self, config: uvicorn.Config, service: Service, port_file: Path | None) -> None:
        super().__init__(config)
        self.service = service
        self.port_file = port_file
        self.on_ready: Callable[[str, int], None] | None = None
        self._wrote_port = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started or not sockets:
            return
        if threading.current_thread() is threading.main_thread():
            settle_heap()
        host, port = sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if self.port_file is not None:
            self.port_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.port_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(f"{port}\n", encoding="utf-8")
            os.replace(tmp, self.port_file)
            self._wrote_port = True
        log.info(
            "ready on http://%s:%d",
            shown,
            port,
            extra={"host": host, "port": port, "pid": os.getpid()},
        )
        if self.on_ready is not None:
            self.on_ready(host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("received %s: draining", signal.Signals(sig).name)
        self.service.begin_shutdown()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the captured signal after a graceful exit, which would
        # turn our clean shut-down into death-by-SIGTERM (exit -15); we do not.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def remove_port_file(self) -> None:
        if self._wrote_port and self.port_file is not None:
            with contextlib.suppress(OSError):
                self.port_file.unlink()
