"""``microhive demo``: the seed workflow end to end on embedded defaults (see microhive.demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from microhive.cli._common import EXIT_FAILURE, err, fail, handle_errors, out

__all__ = ["app"]

app = typer.Typer()


@app.command("demo")
def demo(
    goal: Annotated[
        str | None, typer.Argument(help="The goal (default: a pollinator brief).")
    ] = None,
    directory: Annotated[
        Path, typer.Option("--dir", help="Project folder for the demo mesh (recreated).")
    ] = Path(".microhive-demo"),
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the mesh running afterwards.")
    ] = False,
) -> None:
    """Start the default mesh, load the demo corpus, run a goal, show the report and trace."""
    from microhive.demo import DEFAULT_GOAL, run_demo

    def say(line: str) -> None:
        out.print(escape(line))

    with handle_errors():
        try:
            run = run_demo(directory, goal=goal or DEFAULT_GOAL, keep=keep, say=say)
        except (RuntimeError, TimeoutError) as exc:
            fail(str(exc))
    if run.get("status") != "succeeded":
        err.print("[red]the demo run did not succeed[/]")
        raise typer.Exit(EXIT_FAILURE)
    trace_id = run.get("trace_id")
    out.print(f"\nsee the whole run: microhive trace {trace_id} --file {directory}/microhive.yaml")
