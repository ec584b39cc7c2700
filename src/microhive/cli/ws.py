"""``microhive ws``: files of a running workspace service, from the shell.

The service is found through the mesh file (``-f``; the first ``kind: workspace``
service, or ``--service``) or given directly with ``--url`` /
``$MICROHIVE_WORKSPACE_URL``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from microhive.cli._common import FileOption, JsonOption, handle_errors, out, print_json
from microhive.config import find_config
from microhive.workspace.client import WorkspaceClient, find_workspace_url

__all__ = ["app", "client_for"]

app = typer.Typer(
    name="ws", help="Files in the shared workspace: ls, cat, put, rm, search.", no_args_is_help=True
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Workspace service URL (default: $MICROHIVE_WORKSPACE_URL, else from the mesh file).",
    ),
]
ServiceOption = Annotated[str | None, typer.Option("--service", help="Service name in the mesh.")]
WsOption = Annotated[str, typer.Option("--workspace", "-w", help="Workspace name.")]
PROGRESS_ABOVE = 1024 * 1024


def client_for(
    file: Path | None, url: str | None, service: str | None, workspace: str = "default"
) -> WorkspaceClient:
    """A client for the workspace service named by the options."""
    url = url or os.environ.get("MICROHIVE_WORKSPACE_URL")
    token = os.environ.get("MICROHIVE_TOKEN")
    if url is None:
        url, token = find_workspace_url(find_config(file), service)
    return WorkspaceClient(url, token=token, workspace=workspace)


@app.command("ls")
def ls(
    folder: Annotated[str, typer.Argument(help="Folder to list.")] = "",
    glob: Annotated[str | None, typer.Option("--glob", "-g", help="e.g. '*.md'")] = None,
    limit: Annotated[int, typer.Option(help="Page size.")] = 100,
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    workspace: WsOption = "default",
    json_out: JsonOption = False,
) -> None:
    """List files (every page)."""
    with handle_errors(), client_for(file, url, service, workspace) as client:
        items, cursor = [], None
        while True:
            page = client.list_files(folder, glob=glob, limit=limit, cursor=cursor)
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
    if json_out:
        print_json(items)
        return
    table = Table("path", "version", "size", "type", "index", "author", box=None)
    for i in items:
        table.add_row(
            escape(i["path"]),
            str(i["version"]),
            str(i["size"]),
            i["content_type"],
            i["index_state"],
            i["author"] or "",
        )
    out.print(table)


@app.command("cat")
def cat(
    path: str,
    version: Annotated[int | None, typer.Option(help="An older version.")] = None,
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    workspace: WsOption = "default",
) -> None:
    """Print a file's content to stdout."""
    with handle_errors(), client_for(file, url, service, workspace) as client:
        data = client.read(path, version)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@app.command("put")
def put(
    path: str,
    source: Annotated[Path, typer.Argument(help="Local file ('-' for stdin).")],
    expected_version: Annotated[
        int | None,
        typer.Option("--if-version", help="Refuse unless the file is at this version (0: new)."),
    ] = None,
    content_type: Annotated[str | None, typer.Option(help="Override the content type.")] = None,
    author: Annotated[str | None, typer.Option(help="Role recorded as the author.")] = None,
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    workspace: WsOption = "default",
    json_out: JsonOption = False,
) -> None:
    """Upload a file (a progress bar shows for large ones)."""
    data = sys.stdin.buffer.read() if str(source) == "-" else source.read_bytes()
    with handle_errors(), client_for(file, url, service, workspace) as client:
        if len(data) > PROGRESS_ABOVE:
            columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=out, transient=True) as bar:
                task = bar.add_task("upload", total=len(data))
                info = client.write(
                    path,
                    data,
                    expected_version=expected_version,
                    content_type=content_type,
                    author=author,
                    progress=lambda n: bar.advance(task, n),
                )
        else:
            info = client.write(
                path,
                data,
                expected_version=expected_version,
                content_type=content_type,
                author=author,
            )
    if json_out:
        print_json(info)
    else:
        out.print(f"{escape(info['path'])} v{info['version']} ({info['size']} bytes)")


@app.command("rm")
def rm(
    path: str,
    expected_version: Annotated[int | None, typer.Option("--if-version")] = None,
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    workspace: WsOption = "default",
) -> None:
    """Delete a file (its versions stay readable)."""
    with handle_errors(), client_for(file, url, service, workspace) as client:
        info = client.delete(path, expected_version=expected_version)
    out.print(f"deleted {escape(info['path'])} (v{info['version']})")


@app.command("search")
def search(
    query: str,
    folder: Annotated[str | None, typer.Option(help="Only this folder.")] = None,
    limit: Annotated[int, typer.Option(help="Number of hits.")] = 10,
    mode: Annotated[str, typer.Option(help="hybrid, keyword or vector.")] = "hybrid",
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    workspace: WsOption = "default",
    json_out: JsonOption = False,
) -> None:
    """Hybrid search over file contents."""
    with handle_errors(), client_for(file, url, service, workspace) as client:
        hits = client.search(query, folder=folder, limit=limit, mode=mode)
    if json_out:
        print_json(hits)
        return
    for h in hits:
        out.print(
            f"[bold]{escape(h['path'])}[/] v{h['version']} #{h['chunk']} "
            f"score {h['score']:.4f}\n  {escape(h['snippet'])}"
        )


@app.command("versions")
def versions(
    path: str,
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    workspace: WsOption = "default",
    json_out: JsonOption = False,
) -> None:
    """Version history of a file."""
    with handle_errors(), client_for(file, url, service, workspace) as client:
        items = client.versions(path)
    if json_out:
        print_json(items)
        return
    table = Table("version", "size", "author", "deleted", "index", "trace", box=None)
    for v in items:
        table.add_row(
            str(v["version"]),
            str(v["size"]),
            v["author"] or "",
            "yes" if v["deleted"] else "",
            v["index_state"],
            v["trace_id"] or "",
        )
    out.print(table)
