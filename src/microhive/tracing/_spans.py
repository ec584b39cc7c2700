"""Typed span helpers: GenAI, messaging and HTTP spans with microhive's call context.

Every helper is a context manager that starts a span as the current span, yields
a :class:`TracedSpan`, ends the span on exit and -- if the block raises --
records the error (``error.type``, ERROR status with a readable description;
a :class:`~microhive.errors.Stop` also becomes a ``loop_stopped`` /
``deadline_exceeded`` / ``budget_exhausted`` event) and re-raises.

Names, kinds and attributes follow the OpenTelemetry semantic conventions:

=====================  =========================  ========  ==================================
helper                 span name                  kind      key attributes
=====================  =========================  ========  ==================================
``agent_span``         ``invoke_agent {agent}``   INTERNAL  gen_ai.operation.name, agent.name
``chat_span``          ``chat {model}``           CLIENT    gen_ai.provider.name, request.model,
                                                            usage.input_tokens/output_tokens
``tool_span``          ``execute_tool {tool}``    INTERNAL  gen_ai.tool.name, tool.call.id
``mcp_client_span``    ``tools/call {tool}``      CLIENT    mcp.method.name, gen_ai.tool.name
``mcp_server_span``    ``tools/call {tool}``      SERVER    the same; parent from ``_meta``
``publish_span``       ``publish {destination}``  PRODUCER  messaging.system, destination.name
``process_span``       ``process {destination}``  CONSUMER  + a link to the creation context
``server_span``        ``{METHOD} {route}``       SERVER    http.request.method, http.route
``client_span``        ``{METHOD}``               CLIENT    http.request.method, url.full
=====================  =========================  ========  ==================================

Content (prompts, system instructions, tool arguments and results, model
output) is recorded only when the provider's ``capture_content`` is on -- the
mesh setting ``tracing.capture_content``, off by default. The helpers use the
global tracer provider unless given ``provider=``.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from microhive.context import CallContext, remote_parent, trace_carrier
from microhive.tracing._events import context_attributes, record_error
from microhive.tracing._sqlite import RUN_ID_ATTRIBUTE

__all__ = [
    "TracedSpan",
    "agent_span",
    "chat_span",
    "client_span",
    "creation_context",
    "mcp_client_span",
    "mcp_server_span",
    "process_span",
    "publish_span",
    "server_span",
    "tool_span",
]

_SCOPE = "microhive"
_CONTENT_LIMIT = 16_384
_TRACE_KEYS = ("traceparent", "tracestate")
_tracers: weakref.WeakKeyDictionary[trace.TracerProvider, trace.Tracer] = (
    weakref.WeakKeyDictionary()
)


def _provider(provider: trace.TracerProvider | None) -> trace.TracerProvider:
    return provider if provider is not None else trace.get_tracer_provider()


def _tracer(provider: trace.TracerProvider) -> trace.Tracer:
    tracer = _tracers.get(provider)
    if tracer is None:
        tracer = _tracers[provider] = provider.get_tracer(_SCOPE)
    return tracer


def _content(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) > _CONTENT_LIMIT:
        return text[:_CONTENT_LIMIT] + "...[truncated]"
    return text


class TracedSpan:
    """The span a helper yields: the OpenTelemetry span plus the content switch."""

    __slots__ = ("capture_content", "span")

    def __init__(self, span: Span, capture_content: bool) -> None:
        self.span = span
        self.capture_content = capture_content

    def set(self, key: str, value: AttributeValue | None) -> None:
        """Set an attribute (``None`` is skipped)."""
        if value is not None:
            self.span.set_attribute(key, value)

    def set_content(self, key: str, value: Any) -> None:
        """Set a content attribute -- only when content capture is on (JSON for non-strings)."""
        if self.capture_content and value is not None:
            self.span.set_attribute(key, _content(value))

    def usage(self, *, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        """Token usage of a model call."""
        self.set("gen_ai.usage.input_tokens", input_tokens)
        self.set("gen_ai.usage.output_tokens", output_tokens)

    def response(
        self,
        *,
        model: str | None = None,
        response_id: str | None = None,
        finish_reasons: list[str] | None = None,
    ) -> None:
        self.set("gen_ai.response.model", model)
        self.set("gen_ai.response.id", response_id)
        if finish_reasons:
            self.span.set_attribute("gen_ai.response.finish_reasons", finish_reasons)

    def output_messages(self, messages: Any) -> None:
        self.set_content("gen_ai.output.messages", messages)

    def tool_result(self, result: Any) -> None:
        self.set_content("gen_ai.tool.call.result", result)

    def http_status(self, code: int) -> None:
        """Record the HTTP status; a 5xx marks the span as failed (a 4xx is the caller's)."""
        self.span.set_attribute("http.response.status_code", code)
        if code >= 500:
            self.span.set_attribute("error.type", str(code))
            self.span.set_status(Status(StatusCode.ERROR, f"HTTP {code}"))

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Write this span's ``traceparent``/``tracestate`` into message or request headers."""
        headers.update(trace_carrier(trace.set_span_in_context(self.span)))

    def tool_error(self, message: str) -> None:
        """The tool answered with an error result (MCP ``isError``): a failed call, not a crash."""
        self.span.set_attribute("error.type", "tool_error")
        self.span.set_status(Status(StatusCode.ERROR, message))

    def fail(self, error: BaseException) -> None:
        record_error(error, span=self.span)

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")


class _Scope(AbstractContextManager[TracedSpan]):
    """Start a span as the current span; on exit record any error, restore, end.

    A plain class rather than nested generator context managers: this runs on
    every tool call and message, and each generator layer costs microseconds.
    """

    __slots__ = ("_headers", "_span", "_start", "_token")

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue | None],
        *,
        provider: trace.TracerProvider | None,
        ctx: CallContext | None = None,
        context: Context | None = None,
        links: list[Link] | None = None,
        content: Mapping[str, Any] | None = None,
        headers: MutableMapping[str, str] | None = None,
    ) -> None:
        chosen = _provider(provider)
        capture = bool(getattr(chosen, "capture_content", False))
        if ctx is not None:
            attributes.update(context_attributes(ctx))
        if capture and content:
            attributes.update({k: _content(v) for k, v in content.items() if v is not None})
        attrs = {k: v for k, v in attributes.items() if v is not None}
        tracer = _tracer(chosen)
        self._start = (tracer, name, context, kind, attrs, links, capture)
        self._headers = headers
        self._token: object | None = None
        self._span: Span | None = None

    def __enter__(self) -> TracedSpan:
        tracer, name, context, kind, attrs, links, capture = self._start
        span = tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes=attrs,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        traced = TracedSpan(span, capture)
        if self._headers is not None:
            traced.inject(self._headers)
        return traced

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        assert span is not None, "span scope exited before it was entered"
        try:
            if isinstance(exc, Exception):
                record_error(exc, span=span)
            elif exc is not None and not isinstance(exc, GeneratorExit):
                # cancellation or interpreter exit: not a failure of the work itself
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, f"cancelled ({type(exc).__name__})"))
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            span.end()


# ---------------------------------------------------------------- GenAI spans


def agent_span(
    agent_name: str,
    *,
    agent_id: str | None = None,
    run_id: str | None = None,
    provider_name: str | None = None,
    model: str | None = None,
    ctx: CallContext | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """One agent invocation (a worker taking a sub-task, the orchestrator planning)."""
    return _Scope(
        f"invoke_agent {agent_name}",
        SpanKind.INTERNAL,
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent_name,
            "gen_ai.agent.id": agent_id,
            "gen_ai.provider.name": provider_name,
            "gen_ai.request.model": model,
            RUN_ID_ATTRIBUTE: run_id,
        },
        provider=provider,
        ctx=ctx,
    )


def chat_span(
    provider_name: str,
    model: str,
    *,
    input_messages: Any = None,
    system_instructions: Any = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    ctx: CallContext | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """One model call; call ``span.usage(...)`` and ``span.output_messages(...)`` inside."""
    return _Scope(
        f"chat {model}",
        SpanKind.CLIENT,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name,
            "gen_ai.request.model": model,
            "gen_ai.request.temperature": temperature,
            "gen_ai.request.max_tokens": max_tokens,
        },
        provider=provider,
        ctx=ctx,
        content={
            "gen_ai.input.messages": input_messages,
            "gen_ai.system_instructions": system_instructions,
        },
    )


def tool_span(
    tool_name: str,
    call_id: str | None = None,
    *,
    arguments: Any = None,
    description: str | None = None,
    tool_type: str = "function",
    ctx: CallContext | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """One tool execution; call ``span.tool_result(...)`` inside (recorded only if opted in)."""
    return _Scope(
        f"execute_tool {tool_name}",
        SpanKind.INTERNAL,
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool_name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": tool_type,
            "gen_ai.tool.description": description,
        },
        provider=provider,
        ctx=ctx,
        content={"gen_ai.tool.call.arguments": arguments},
    )


# ------------------------------------------------------------ messaging spans


def publish_span(
    system: str,
    destination: str,
    *,
    headers: MutableMapping[str, str] | None = None,
    message_id: str | None = None,
    operation: str = "publish",
    body_size: int | None = None,
    ctx: CallContext | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """Sending one message (``operation``: ``publish`` or ``send``).

    With ``headers``, this span's ``traceparent`` is written into them as the
    message's creation context, which the consumer links to.
    """
    return _Scope(
        f"{operation} {destination}",
        SpanKind.PRODUCER,
        {
            "messaging.system": system,
            "messaging.destination.name": destination,
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.message.id": message_id,
            "messaging.message.body.size": body_size,
        },
        headers=headers,
        provider=provider,
        ctx=ctx,
    )


def creation_context(headers: Mapping[str, str]) -> Context | None:
    """The OpenTelemetry context a message was created in, from its headers (or ``None``)."""
    return remote_parent({k.lower(): v for k, v in headers.items() if k.lower() in _TRACE_KEYS})


def process_span(
    system: str,
    destination: str,
    headers: Mapping[str, str],
    *,
    message_id: str | None = None,
    consumer_group: str | None = None,
    delivery_attempt: int | None = None,
    ctx: CallContext | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """Handling one delivered message: a child of, and linked to, its creation context.

    Parenting to the creation context keeps every delivery -- redeliveries
    included -- in the publisher's trace; the link is what the messaging
    conventions ask for and survives a consumer that batches.
    """
    created = creation_context(headers)
    links: list[Link] = []
    if created is not None:
        links.append(Link(trace.get_current_span(created).get_span_context()))
    return _Scope(
        f"process {destination}",
        SpanKind.CONSUMER,
        {
            "messaging.system": system,
            "messaging.destination.name": destination,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": message_id,
            "messaging.consumer.group.name": consumer_group,
            "microhive.delivery_attempt": delivery_attempt,
        },
        provider=provider,
        ctx=ctx,
        context=created,
        links=links,
    )


# ------------------------------------------------------------------ MCP spans


def _mcp_attributes(
    method: str, target: str | None, request_id: str | int | None, session_id: str | None
) -> dict[str, AttributeValue | None]:
    return {
        "mcp.method.name": method,
        "gen_ai.operation.name": "execute_tool" if method == "tools/call" else None,
        "gen_ai.tool.name": target if method == "tools/call" else None,
        "gen_ai.prompt.name": target if method == "prompts/get" else None,
        "jsonrpc.request.id": str(request_id) if request_id is not None else None,
        "mcp.session.id": session_id,
    }


def mcp_client_span(
    method: str,
    target: str | None = None,
    *,
    meta: MutableMapping[str, Any] | None = None,
    request_id: str | int | None = None,
    session_id: str | None = None,
    arguments: Any = None,
    ctx: CallContext | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """One MCP request from the caller's side: ``tools/call web.fetch`` (CLIENT).

    With ``meta`` (the request's ``params._meta``), this span's ``traceparent`` is
    written into it, so the server's span becomes its child. For ``tools/call``
    the span is also the GenAI tool execution (``gen_ai.operation.name``).
    """
    return _Scope(
        f"{method} {target}" if target else method,
        SpanKind.CLIENT,
        _mcp_attributes(method, target, request_id, session_id),
        provider=provider,
        ctx=ctx,
        headers=meta,
        content={"gen_ai.tool.call.arguments": arguments},
    )


def mcp_server_span(
    method: str,
    target: str | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    request_id: str | int | None = None,
    session_id: str | None = None,
    arguments: Any = None,
    ctx: CallContext | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """One MCP request handled: ``tools/call web.fetch`` (SERVER).

    The parent is the caller's span from ``meta`` (``params._meta``), as the MCP
    conventions ask; the ambient span (e.g. the HTTP request that carried it)
    is linked. For ``tools/call`` this one span is also the tool execution, so
    no separate ``execute_tool`` span is needed.
    """
    carrier = {k: v for k, v in (meta or {}).items() if isinstance(v, str)}
    parent = creation_context(carrier)
    links: list[Link] = []
    ambient = trace.get_current_span().get_span_context()
    if parent is not None and ambient.is_valid:
        links.append(Link(ambient))
    return _Scope(
        f"{method} {target}" if target else method,
        SpanKind.SERVER,
        _mcp_attributes(method, target, request_id, session_id),
        provider=provider,
        ctx=ctx,
        context=parent,
        links=links,
        content={"gen_ai.tool.call.arguments": arguments},
    )


# ----------------------------------------------------------------- HTTP spans


def server_span(
    method: str,
    route: str,
    *,
    ctx: CallContext | None = None,
    headers: Mapping[str, str] | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """One incoming request, a child of the caller's span (from ``ctx`` or ``headers``)."""
    parent: Context | None = None
    if ctx is not None and ctx.trace:
        parent = ctx.otel_context()
    elif headers is not None:
        parent = creation_context(headers)
    return _Scope(
        f"{method.upper()} {route}",
        SpanKind.SERVER,
        {"http.request.method": method.upper(), "http.route": route},
        provider=provider,
        ctx=ctx,
        context=parent,
    )


def client_span(
    method: str,
    url: str,
    *,
    headers: MutableMapping[str, str] | None = None,
    provider: trace.TracerProvider | None = None,
) -> AbstractContextManager[TracedSpan]:
    """One outgoing HTTP request; writes this span's ``traceparent`` into ``headers``."""
    parts = urlsplit(url)
    # No query or credentials on the span: they may hold secrets.
    safe = urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
    if parts.port is not None:
        safe = urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", ""))
    return _Scope(
        method.upper(),
        SpanKind.CLIENT,
        {
            "http.request.method": method.upper(),
            "url.full": safe,
            "server.address": parts.hostname,
            "server.port": parts.port,
        },
        headers=headers,
        provider=provider,
        ctx=None,
    )
