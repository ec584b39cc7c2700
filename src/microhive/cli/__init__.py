"""The ``microhive`` command line.

Each area keeps its commands in its own module with an ``app = typer.Typer()``;
this file only assembles them. Add a sub-app with one line below.
"""

from __future__ import annotations

from typing import Annotated

import typer

from microhive import __version__
from microhive.cli import demo, events, mesh, model, run, tools, trace, webhooks, ws

__all__ = ["app", "main"]

app = typer.Typer(
    name="microhive",
    help="Run one AI agent as a mesh of small services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(mesh.app)  # init, up, status, down, logs, serve (top-level commands)
app.add_typer(run.app)  # run GOAL
app.add_typer(demo.app)  # demo
app.add_typer(trace.app)  # trace RUN_OR_TRACE_ID
app.add_typer(tools.app)  # tools [register|attach|unregister|held|approve]
app.add_typer(events.app, name="events", help="Tail, publish and replay bus events.")
app.add_typer(ws.app, name="ws", help="Files in the shared workspace.")
app.add_typer(webhooks.app, name="webhooks", help="Webhook subscriptions of the workspace.")
app.add_typer(model.app, name="model", help="Local models for the model-server: list, fetch.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"microhive {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Run one AI agent as a mesh of small services."""


def main() -> None:
    """Console-script entry point."""
    app()
