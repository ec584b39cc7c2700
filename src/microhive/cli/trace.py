"""``microhive trace``: show a run's trace from the embedded trace store.

``microhive trace RUN_OR_TRACE_ID`` draws the waterfall of one trace (found by
run id, or by a trace id or a prefix of at least 4 hex digits), ``--last`` the
most recent one, and with no argument the recent traces are listed. The list
and ``--last`` leave out background traces (a gateway's polling of its tool
services, health checks) unless ``--all`` is given. ``--json`` prints the spans
instead. The store is the mesh file's ``stores.traces``
(relative to the mesh file's folder); with no mesh file, the default
``.microhive/traces.db`` under the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from microhive.cli._common import (
    EXIT_USAGE,
    FileOption,
    JsonOption,
    fail,
    handle_errors,
    load_mesh,
    out,
    print_json,
)
from microhive.config.loader import DEFAULT_FILE
from microhive.tracing import (
    DEFAULT_STORE_URL,
    TraceStore,
    render_trace_list,
    render_waterfall,
)

__all__ = ["app", "trace"]

app = typer.Typer()


def _store(file: Path | None, store_url: str | None) -> TraceStore:
    """The store named by ``--store``, else by the mesh file, else the default path."""
    if store_url is not None:
        return TraceStore(store_url)
    if file is None and not os.environ.get("MICROHIVE_CONFIG") and not Path(DEFAULT_FILE).is_file():
        return TraceStore(DEFAULT_STORE_URL)
    mesh, path = load_mesh(file)
    return TraceStore(mesh.stores.traces, base_dir=path.parent)


@app.command("trace")
def trace(
    ref: Annotated[
        str | None,
        typer.Argument(
            metavar="RUN_OR_TRACE_ID",
            help="A run id, or a trace id (a prefix of 4+ hex digits is enough).",
            show_default=False,
        ),
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="Show the most recent trace.")] = False,
    as_json: JsonOption = False,
    file: FileOption = None,
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store", help="Trace store URL (overrides the mesh file).", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="How many traces to list.")
    ] = 20,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all",
            "-a",
            help="Include background traces (polling, health checks) in the list and --last.",
        ),
    ] = False,
) -> None:
    """Show a trace as a waterfall: service, span, start, duration, status, hops.

    With no argument, list the recent traces. Background traces (a gateway polling
    its tool services, health checks) are left out of the list and of --last
    unless --all is given.
    """
    if ref is not None and last:
        fail("give either RUN_OR_TRACE_ID or --last, not both", EXIT_USAGE)
    with handle_errors(), _store(file, store_url) as store:
        if ref is None and not last:
            summaries = store.traces(limit=limit, background=show_all)
            if as_json:
                print_json([s.to_dict() for s in summaries])
            elif not summaries:
                hidden = "" if show_all else " (background traces are hidden; --all shows them)"
                out.print(f"no traces in {store.path} yet{hidden}")
            else:
                out.print(render_trace_list(summaries, background_hidden=not show_all))
            return
        trace_id = store.last(background=show_all) if last else store.find(ref or "")
        summary = store.summary(trace_id)
        spans = store.spans(trace_id)
        if as_json:
            print_json({**summary.to_dict(), "spans": [s.to_dict() for s in spans]})
        else:
            out.print(render_waterfall(summary, spans))
