"""Background traces: work with no user request behind it, marked so lists can hide it.

A gateway lists its upstreams' tools every few seconds, connects to them, and
checks their health; each of those calls is a trace of its own. Nobody asked
for them, and at a few traces every ten seconds they push a user's run off any
list of recent traces within a minute. Code that polls or does housekeeping runs
inside :func:`background`::

    with background():
        await pool.list_tools()      # the SDK's client span starts a new trace

Every trace *started* inside the block gets the root-span attribute
``microhive.background = true``: the block detaches from any current span, so
work in it always starts its own trace, never joins a request's. Tasks started
inside inherit the mark (they copy the context). The spans of other services
that take part (the upstream's server span) join that trace, so the whole trace
is background by its root.

The mark is set by the sampler (:class:`BackgroundMarker` wraps the root
sampler of a microhive tracer provider), which runs only when a trace starts:
spans that have a parent, all of a request's spans, pay nothing for it, and the
store's write path is unchanged. ``microhive trace`` hides these traces unless
``--all`` is given; a trace's summary says ``background``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

__all__ = ["BACKGROUND_ATTRIBUTE", "BackgroundMarker", "background", "in_background"]

#: The root-span attribute that marks a background trace.
BACKGROUND_ATTRIBUTE = "microhive.background"
_KEY = otel_context.create_key("microhive.background")


class background:
    """Run the block as background work: what it traces starts new, marked traces.

    A plain class (not a generator): pollers enter it every few seconds and it
    must cost next to nothing.
    """

    __slots__ = ("_token",)

    def __init__(self) -> None:
        self._token: object | None = None

    def __enter__(self) -> None:
        # No current span (so a span started here is a root), and the mark.
        detached = trace.set_span_in_context(trace.INVALID_SPAN, Context())
        self._token = otel_context.attach(otel_context.set_value(_KEY, True, detached))

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None


def in_background(context: Context | None = None) -> bool:
    """Whether ``context`` (default: the current one) is inside :func:`background`."""
    return otel_context.get_value(_KEY, context) is True


class BackgroundMarker(Sampler):
    """A root sampler that adds ``microhive.background`` to traces started in the background.

    It decides nothing itself: ``inner`` (e.g. the mesh's ratio sampler) decides,
    and a sampled trace started inside :func:`background` gets the attribute on
    its root span. Put it under ``ParentBased`` as the root sampler, so it runs
    only when a trace starts.
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        result = self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is not Decision.RECORD_AND_SAMPLE or not in_background(parent_context):
            return result
        marked = dict(result.attributes or {})
        marked[BACKGROUND_ATTRIBUTE] = True
        return SamplingResult(result.decision, marked, result.trace_state)

    def get_description(self) -> str:
        return f"BackgroundMarker{{{self.inner.get_description()}}}"
