"""What every CLI command shares: consoles, the ``-f`` option, error-to-exit-code mapping.

Exit codes: 0 success, 1 a run-time failure (a service would not start, a port is
taken, nothing is running), 2 a usage problem (bad mesh file, unknown service,
bad option). Messages go to stderr; results (tables, ``--json``) to stdout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from microhive.config import MeshConfig, find_config, load_config
from microhive.errors import MicrohiveError, UsageError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "FileOption",
    "JsonOption",
    "err",
    "fail",
    "handle_errors",
    "load_mesh",
    "out",
    "print_json",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="The mesh file (default: $MICROHIVE_CONFIG, else ./microhive.yaml).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn our errors into a message and an exit code (2 usage, 1 run time)."""
    try:
        yield
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except MicrohiveError as exc:
        fail(str(exc), EXIT_FAILURE)


def load_mesh(file: Path | None) -> tuple[MeshConfig, Path]:
    """The validated mesh and the path of its file (ConfigError -> exit 2)."""
    with handle_errors():
        path = find_config(file)
        return load_config(path), path


def print_json(data: Any) -> None:
    """One JSON document on stdout, unstyled."""
    out.out(json.dumps(data, indent=2, sort_keys=True), highlight=False)
