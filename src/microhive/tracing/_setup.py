"""Building a process's tracer provider: the embedded store, and OTLP when configured.

Nothing happens at import time. The service runtime calls :func:`setup_tracing`
when a service process starts, then :meth:`TracingHandle.install` to make the
provider global (OpenTelemetry allows that once per process); tests and tools
can keep a local provider and pass it to the span helpers instead.

Where spans go:

* always (unless ``tracing.enabled`` is false) the embedded store named by
  ``stores.traces`` -- one SQLite file shared by every process of the mesh;
* also over OTLP/HTTP (protobuf) when ``tracing.otlp_endpoint`` is set, or else
  ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) or
  ``$OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended), as OpenTelemetry
  specifies. The endpoint is operator configuration, not agent input, so the
  outbound-URL policy for agents does not apply to it.

Each exporter sits behind its own ``BatchSpanProcessor``: spans are queued and
exported on a background thread, so a slow collector never slows a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased

from microhive.config.model import MeshConfig, TracingSpec
from microhive.errors import MissingDependency
from microhive.tracing._background import BackgroundMarker
from microhive.tracing._ids import ClockFirstIdGenerator
from microhive.tracing._sqlite import DEFAULT_STORE_URL, SqliteSpanExporter, store_path

__all__ = ["MeshTracerProvider", "TracingHandle", "TracingSettings", "setup_tracing"]

_OTLP_PATH = "/v1/traces"
#: Spans held per exporter before new ones are dropped (absorbs bursts; ~1 KB each).
_QUEUE = 8192


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """What :func:`setup_tracing` needs, when there is no mesh file at hand."""

    store_url: str = DEFAULT_STORE_URL
    otlp_endpoint: str | None = None
    capture_content: bool = False
    enabled: bool = True
    max_spans: int | None = 200_000
    max_age_hours: float | None = 168.0
    sample_ratio: float = 1.0
    mesh_name: str = "microhive"

    @classmethod
    def from_mesh(cls, mesh: MeshConfig) -> TracingSettings:
        spec: TracingSpec = mesh.tracing
        return cls(
            store_url=mesh.stores.traces,
            otlp_endpoint=spec.otlp_endpoint,
            capture_content=spec.capture_content,
            enabled=spec.enabled,
            max_spans=spec.max_spans,
            max_age_hours=spec.max_age_hours,
            sample_ratio=spec.sample_ratio,
            mesh_name=mesh.name,
        )


class MeshTracerProvider(TracerProvider):
    """The SDK provider plus the one microhive switch the span helpers read.

    Keeping ``capture_content`` on the provider (rather than in a module global)
    means it travels with whichever provider is in use: the global one in a
    service, a local one in a test.
    """

    def __init__(self, *, capture_content: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capture_content = capture_content


def otlp_endpoint(configured: str | None, env: dict[str, str] | None = None) -> str | None:
    """The full OTLP/HTTP traces URL, from the mesh setting or the standard variables."""
    env = dict(os.environ) if env is None else env
    base = configured or None
    if base is None:
        signal = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if signal:
            return signal
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None
    if base is None:
        return None
    base = base.rstrip("/")
    return base if base.endswith(_OTLP_PATH) else base + _OTLP_PATH


def _otlp_exporter(endpoint: str) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise MissingDependency(
            "opentelemetry-exporter-otlp-proto-http", "tracing", "OTLP export to a collector"
        ) from exc
    return OTLPSpanExporter(endpoint=endpoint, timeout=5)


class TracingHandle:
    """A process's tracing: its provider and exporters. Close it to flush and stop.

    ``with setup_tracing(...) as handle:`` or ``async with``; :meth:`aclose` and
    :meth:`close` flush queued spans, then shut the exporters down.
    """

    def __init__(
        self,
        provider: MeshTracerProvider,
        settings: TracingSettings,
        store_file: Path | None,
        otlp_url: str | None,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.store_file = store_file
        self.otlp_url = otlp_url
        self._closed = False

    @property
    def capture_content(self) -> bool:
        return self.provider.capture_content

    def tracer(self, name: str = "microhive") -> trace.Tracer:
        return self.provider.get_tracer(name)

    def install(self) -> None:
        """Make this the process-wide provider (the service runtime does this once at start)."""
        trace.set_tracer_provider(self.provider)

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Export everything queued so far (e.g. before a test reads the store)."""
        return self.provider.force_flush(timeout_millis)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.provider.force_flush(10_000)
        self.provider.shutdown()

    async def aclose(self) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> TracingHandle:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> TracingHandle:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def setup_tracing(
    service: str,
    replica: int,
    mesh_or_settings: MeshConfig | TracingSettings | None = None,
    *,
    store_url: str | None = None,
    base_dir: str | Path | None = None,
    otlp_endpoint_url: str | None = None,
    processors: list[SpanProcessor] | None = None,
    env: dict[str, str] | None = None,
) -> TracingHandle:
    """Build the tracer provider of one service process (not installed globally).

    ``store_url`` overrides the mesh's ``stores.traces``; a relative ``sqlite:///``
    path is taken from ``base_dir`` (default: the working directory, which the
    supervisor sets to the mesh file's folder). ``otlp_endpoint_url`` overrides
    the configured collector. Extra ``processors`` (e.g. an in-memory exporter
    in a test) are added after ours.
    """
    if isinstance(mesh_or_settings, MeshConfig):
        settings = TracingSettings.from_mesh(mesh_or_settings)
    else:
        settings = mesh_or_settings or TracingSettings()
    if store_url is not None:
        settings = replace(settings, store_url=store_url)
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": settings.mesh_name,
            "service.instance.id": f"{service}-{replica}",
            "microhive.replica": replica,
            "process.pid": os.getpid(),
        }
    )
    # Parent-based: a service records a span exactly when its caller did, so a
    # sampled run is whole in every service and an unsampled one costs little.
    # Disabled (and no extra processor to feed): a span this process would start a
    # trace with is not recorded -- a cheap non-recording span whose trace id still
    # reaches logs and onward calls, marked unsampled so a disabled mesh builds no
    # spans anywhere. A call that arrives sampled (a traced caller) is still
    # followed, so the services after this one keep their part of that trace.
    # The root sampler also marks traces started inside ``background()`` (pollers),
    # so trace lists can hide them; it runs only when a trace starts.
    sampler: Sampler = ParentBased(BackgroundMarker(TraceIdRatioBased(settings.sample_ratio)))
    if not settings.enabled and not processors:
        sampler = ParentBased(ALWAYS_OFF)
    provider = MeshTracerProvider(
        capture_content=settings.capture_content,
        resource=resource,
        sampler=sampler,
        id_generator=ClockFirstIdGenerator(),  # a batch's traces share the store's index pages
    )
    store_file: Path | None = None
    otlp_url: str | None = None
    if settings.enabled:
        store_file = store_path(settings.store_url, base_dir)
        store = SqliteSpanExporter(
            store_file, max_spans=settings.max_spans, max_age_hours=settings.max_age_hours
        )
        provider.add_span_processor(
            BatchSpanProcessor(store, schedule_delay_millis=500, max_queue_size=_QUEUE)
        )
        otlp_url = otlp_endpoint(otlp_endpoint_url or settings.otlp_endpoint, env)
        if otlp_url is not None:
            provider.add_span_processor(
                BatchSpanProcessor(
                    _otlp_exporter(otlp_url), schedule_delay_millis=1000, max_queue_size=_QUEUE
                )
            )
    for processor in processors or ():
        provider.add_span_processor(processor)
    return TracingHandle(provider, settings, store_file, otlp_url)
