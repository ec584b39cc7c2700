"""Rendering a stored trace for people: a Rich waterfall and the trace list.

The waterfall is a table in tree order (children under their parent, siblings
by start time): service, span name, start offset, duration, a bar placed on the
trace's time line, status and hops. Failed spans are red, and the stop events
(``loop_stopped``, ``deadline_exceeded``, ``breaker_opened``, ...) get a red row
of their own under the span, so the reason a run stopped is on screen; so do,
in yellow, the events a user needs to see on the way there (a refused plan, a
model call retried, a sub-task's missing output), each with its reason.
A span whose parent is not in the store (a caller that does not trace) is shown
as a root.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from microhive.tracing._events import (
    EVENT_BREAKER_OPENED,
    EVENT_BUDGET_EXHAUSTED,
    EVENT_CANCELLED,
    EVENT_DEADLINE_EXCEEDED,
    EVENT_LOOP_STOPPED,
    EVENT_MODEL_RETRY,
    EVENT_OUTPUT_MISSING,
    EVENT_PLAN_REFUSED,
)
from microhive.tracing._store import StoredSpan, TraceSummary

__all__ = ["format_duration", "render_trace_list", "render_waterfall", "tree_order"]

#: Events that ended work: a red row each.
_STOP_EVENTS = frozenset(
    {
        EVENT_LOOP_STOPPED,
        EVENT_DEADLINE_EXCEEDED,
        EVENT_BUDGET_EXHAUSTED,
        EVENT_BREAKER_OPENED,
        EVENT_CANCELLED,
        "exception",
    }
)
#: Events on the way that a user needs to see (work went on): a yellow row each.
_NOTICE_EVENTS = frozenset({EVENT_PLAN_REFUSED, EVENT_MODEL_RETRY, EVENT_OUTPUT_MISSING})
_SHOWN_EVENTS = _STOP_EVENTS | _NOTICE_EVENTS


def format_duration(ms: float) -> str:
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def tree_order(spans: Sequence[StoredSpan]) -> Iterator[tuple[StoredSpan, str, str]]:
    """Spans depth first as (span, prefix for its own line, prefix for lines below it)."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[StoredSpan]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.start_ns, s.span_id))

    def walk(parent: str | None, indent: str) -> Iterator[tuple[StoredSpan, str, str]]:
        group = children.get(parent, [])
        for i, span in enumerate(group):
            last = i == len(group) - 1
            if parent is None:
                own, below = "", ""
            else:
                own = indent + ("└─ " if last else "├─ ")
                below = indent + ("   " if last else "│  ")
            yield span, own, below
            yield from walk(span.span_id, below)

    yield from walk(None, "")


def _bar(span: StoredSpan, t0: int, total: int, width: int) -> Text:
    start = int((span.start_ns - t0) / total * width)
    length = max(1, round((span.end_ns - span.start_ns) / total * width))
    start = min(start, width - 1)
    length = min(length, width - start)
    bar = Text(" " * start)
    bar.append("█" * length, style="red" if span.error else "cyan")
    return bar


def _hops(span: StoredSpan) -> str:
    hops = span.attributes.get("microhive.hops")
    most = span.attributes.get("microhive.max_hops")
    if hops is None:
        return ""
    return f"{hops}/{most}" if most is not None else str(hops)


def render_waterfall(summary: TraceSummary, spans: Sequence[StoredSpan], width: int = 32) -> Table:
    """The trace as a table; red rows failed, indented red rows say why work stopped."""
    t0 = min((s.start_ns for s in spans), default=summary.start_ns)
    t1 = max((s.end_ns for s in spans), default=summary.end_ns)
    total = max(t1 - t0, 1)
    started = datetime.fromtimestamp(t0 / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"trace {summary.trace_id}"
    if summary.run_id:
        title += f"  run {summary.run_id}"
    caption = (
        f"{started}  {format_duration(total / 1e6)}  {len(spans)} spans  "
        f"{summary.service_count} service{'s' if summary.service_count != 1 else ''}  "
        + (f"{summary.error_count} failed" if summary.error else "no errors")
    )
    table = Table(title=title, caption=caption, expand=False, pad_edge=False, box=None)
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=60)
    table.add_column("service", no_wrap=True)
    table.add_column("start", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=width)
    table.add_column("status", no_wrap=True)
    table.add_column("hops", justify="right", no_wrap=True)
    for span, own, below in tree_order(spans):
        style = "red" if span.error else None
        status = Text("ERROR", style="bold red") if span.error else Text("ok", style="green")
        table.add_row(
            Text(own + span.name, style=style or ""),
            span.service,
            f"+{format_duration((span.start_ns - t0) / 1e6)}",
            format_duration(span.duration_ms),
            _bar(span, t0, total, width),
            status,
            _hops(span),
            style=style,
        )
        for event in span.events:
            if event["name"] not in _SHOWN_EVENTS:
                continue
            attrs = event.get("attributes", {})
            reason = attrs.get("microhive.reason") or attrs.get("exception.message") or ""
            attempt = attrs.get("microhive.attempt")
            if attempt is not None:
                reason = f"attempt {attempt}: {reason}"
            offset = (event["time_ns"] - t0) / 1e6
            notice = event["name"] in _NOTICE_EVENTS
            table.add_row(
                Text(
                    f"{below}  ! {event['name']}: {reason}",
                    style="yellow" if notice else "bold red",
                ),
                "",
                f"+{format_duration(offset)}",
                "",
                "",
                "",
                "",
            )
        if span.error and span.status_message and not span.events:
            table.add_row(Text(f"{below}  ! {span.status_message}", style="red"), *[""] * 6)
    return table


def render_trace_list(
    summaries: Sequence[TraceSummary], *, background_hidden: bool = False
) -> Table:
    """Recent traces, newest first; background ones (when listed) are dimmed."""
    caption = "background traces hidden (--all shows them)" if background_hidden else None
    table = Table(title="recent traces", caption=caption, box=None, pad_edge=False)
    for name, justify in (
        ("trace", "left"),
        ("started", "left"),
        ("root", "left"),
        ("services", "right"),
        ("spans", "right"),
        ("duration", "right"),
        ("status", "left"),
        ("run", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for s in summaries:
        started = datetime.fromtimestamp(s.start_ns / 1e9, UTC).strftime("%m-%d %H:%M:%S")
        root = f"{s.root_service}: {s.root_name}" + (" (background)" if s.background else "")
        table.add_row(
            s.trace_id[:16],
            started,
            Text(root, style="dim") if s.background else root,
            str(s.service_count),
            str(s.span_count),
            format_duration(s.duration_ms),
            Text(f"{s.error_count} failed", style="red") if s.error else Text("ok", style="green"),
            s.run_id or "",
            style="red" if s.error else None,
        )
    return table
