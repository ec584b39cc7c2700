"""One ``tools/call`` on a tool service: its call context, its span, its metrics.

The MCP server's middleware hands every ``tools/call`` to :func:`traced_call`,
which decodes ``params._meta`` into a :class:`~microhive.context.CallContext`,
opens the ``tools/call {tool}`` server span parented from that ``_meta`` (as
the MCP semantic conventions ask), refuses the call -- recorded as the stop's
span event -- when its hops, deadline or budget have run out, and otherwise runs
the tool with the context active, so the tool sees the trace, hops and
deadline through ``CallContext.current()`` and its own spans are children.

The MCP SDK ships a server middleware of its own that opens the same span; a
tool service replaces it (:func:`without_sdk_spans`) so each request has one
server span -- ours, which also carries the call context, stop events and
content only on opt-in. Other requests (``tools/list``...) get a plain server
span when the caller's ``_meta`` carries a trace (:func:`traced_request`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableSequence
from dataclasses import replace
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.types import CallToolResult, TextContent
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from pydantic import BaseModel

from microhive.context import CallContext
from microhive.errors import MicrohiveError
from microhive.tracing import CallMetrics, TracedSpan, mcp_server_span

__all__ = ["error_text", "traced_call", "traced_request", "without_sdk_spans"]

log = logging.getLogger("microhive.mcp.server")


def error_text(exc: BaseException) -> str:
    """What a caller is told about a failure: our error code and message, or the exception."""
    if isinstance(exc, MicrohiveError):
        return f"{exc.code}: {exc.message}"
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _refused(name: str, exc: MicrohiveError) -> CallToolResult:
    log.info("tool call %s refused: %s", name, error_text(exc))
    return CallToolResult(
        content=[TextContent(type="text", text=f"tool call refused: {error_text(exc)}")],
        is_error=True,
    )


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, CallToolResult):
        return bool(result.is_error)
    return isinstance(result, dict) and bool(result.get("isError"))


def _content_of(result: HandlerResult) -> Any:
    """The content of a tool's answer, in whichever shape the SDK handed it back."""
    data: Any = result
    if isinstance(result, BaseModel):
        data = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(data, dict):
        return data.get("content", data)
    return data


def _span_context(call_ctx: CallContext, span: TracedSpan) -> tuple[CallContext, Context | None]:
    """The call context with this span as its trace parent, for the tool to see.

    With it comes the OpenTelemetry context holding the live span (current since
    the span helper entered), so activating the call context does not parse the
    ``traceparent`` just written back into a remote copy of the same span.
    """
    if not span.span.is_recording():
        return call_ctx, None
    carrier: dict[str, str] = {}
    span.inject(carrier)
    if not carrier:
        return call_ctx, None
    return replace(call_ctx, trace=carrier), otel_context.get_current()


async def traced_call(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext, metrics: CallMetrics | None
) -> HandlerResult:
    """Decode, check and activate the call context of one ``tools/call``, in its span."""
    params = ctx.params or {}
    name = str(params.get("name", "?"))
    meta = dict(ctx.meta or {})
    try:
        call_ctx = CallContext.from_meta(meta)
    except MicrohiveError as exc:  # malformed _meta: no context to trace it in
        return _refused(name, exc)
    started = time.perf_counter()
    outcome = "ok"
    try:
        with mcp_server_span(
            "tools/call",
            name,
            meta=meta,
            request_id=ctx.request_id,
            arguments=params.get("arguments"),
            ctx=call_ctx,
        ) as span:
            try:
                call_ctx.check()
            except MicrohiveError as exc:
                span.fail(exc)  # hop limit, deadline, budget: the stop's event
                outcome = exc.code
                return _refused(name, exc)
            tool_ctx, live = _span_context(call_ctx, span)
            with tool_ctx.activate(live):
                result = await call_next(ctx)
            if _is_error(result):
                outcome = "tool_error"
                span.tool_error("the tool answered with an error")
            elif span.capture_content:
                span.tool_result(_content_of(result))
            return result
    except BaseException as exc:
        outcome = exc.code if isinstance(exc, MicrohiveError) else "error"
        raise
    finally:
        if metrics is not None:
            metrics.tool_calls.labels(name, outcome).observe(time.perf_counter() - started)


def without_sdk_spans(middleware: MutableSequence[Any]) -> None:
    """Drop the MCP SDK's own OpenTelemetry server middleware from a server's chain.

    Matched by name: the class lives in a private SDK module. Without it, our
    middleware's span is the one server span of each request.
    """
    middleware[:] = [
        m
        for m in middleware
        if not (
            type(m).__name__ == "OpenTelemetryMiddleware" and type(m).__module__.startswith("mcp.")
        )
    ]


async def traced_request(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Any other MCP request: a server span when the caller's ``_meta`` carries a trace."""
    meta = ctx.meta
    if not meta or "traceparent" not in meta:
        return await call_next(ctx)
    with mcp_server_span(ctx.method, meta=dict(meta), request_id=ctx.request_id):
        return await call_next(ctx)
