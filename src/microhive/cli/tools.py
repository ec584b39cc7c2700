"""``microhive tools``: the gateway's tool catalogue and its admin API, from the shell.

The gateway is found through the mesh file (``-f``; the first ``kind: gateway``
service, or ``--service``) or given with ``--url`` / ``$MICROHIVE_GATEWAY_URL``.
The mesh token (``security.token_env``) is sent when one is configured.

    microhive tools [--json]                        the catalogue
    microhive tools register NAMESPACE URL [--version V]
    microhive tools attach NAMESPACE URL [--version V]   hot swap
    microhive tools unregister NAMESPACE
    microhive tools held                            tools held after a change
    microhive tools approve NAMESPACE.TOOL          accept a held tool
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from microhive.cli._common import FileOption, JsonOption, handle_errors, out, print_json
from microhive.config import find_config, load_config
from microhive.errors import InvalidInput, ServiceUnavailable, UpstreamError
from microhive.service import STATE_DIR, mesh_token, service_url

__all__ = ["app", "find_gateway_url"]

app = typer.Typer(
    name="tools",
    help="The tool catalogue of the MCP gateway, and its registry (register, attach, approve).",
    invoke_without_command=True,
)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Gateway URL (default: $MICROHIVE_GATEWAY_URL, else the mesh)."),
]
ServiceOption = Annotated[str | None, typer.Option("--service", help="Gateway service name.")]
VersionOption = Annotated[str, typer.Option("--version", help="Version label of the upstream.")]


def find_gateway_url(mesh_file: Path, service: str | None = None) -> tuple[str, str | None]:
    """The base URL of a mesh's gateway service and the mesh token (``None`` if unset)."""
    mesh = load_config(mesh_file)
    url = service_url(mesh, kind="gateway", name=service, state_dir=mesh_file.parent / STATE_DIR)
    return url, mesh_token(mesh)


def _target(file: Path | None, url: str | None, service: str | None) -> tuple[str, str | None]:
    url = url or os.environ.get("MICROHIVE_GATEWAY_URL")
    if url:
        token_env = None
        try:
            token_env = load_config(find_config(file)).security.token_env
        except Exception:  # no mesh file: a bare URL is fine
            token_env = None
        return url.rstrip("/"), os.environ.get(token_env) if token_env else None
    return find_gateway_url(find_config(file), service)


def _request(
    method: str, file: Path | None, url: str | None, service: str | None, path: str, **kw: Any
) -> Any:
    base, token = _target(file, url, service)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60, trust_env=False) as http:
            response = http.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"cannot reach the gateway at {base}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text}
    if response.status_code >= 400:
        message = body.get("message", response.text) if isinstance(body, dict) else response.text
        if response.status_code < 500:
            raise InvalidInput(f"gateway refused ({response.status_code}): {message}")
        raise UpstreamError(f"gateway error ({response.status_code}): {message}")
    return body


@app.callback()
def catalogue(
    ctx: typer.Context,
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print every tool the gateway serves: name, service, health, description."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = (file, url, service)
        return
    with handle_errors():
        tools = _request("GET", file, url, service, "/admin/tools")["tools"]
    if as_json:
        print_json(tools)
        return
    table = Table("tool", "service", "health", "description", box=None)
    for row in tools:
        health = "held" if row["held"] else row["health"]
        color = "green" if health == "healthy" else "red"
        table.add_row(
            escape(row["tool"]),
            escape(f"{row['service']} {row['version']}".strip()),
            f"[{color}]{escape(health)}[/]",
            escape(row["description"].splitlines()[0] if row["description"] else ""),
        )
    out.print(table)


def _where(ctx: typer.Context) -> tuple[Path | None, str | None, str | None]:
    obj = ctx.obj or (None, None, None)
    return obj[0], obj[1], obj[2]


@app.command()
def register(ctx: typer.Context, namespace: str, url: str, version: VersionOption = "") -> None:
    """Register a tool service (an MCP endpoint URL) under NAMESPACE."""
    with handle_errors():
        body = {"namespace": namespace, "url": url, "version": version}
        row = _request("POST", *_where(ctx), "/admin/upstreams", json=body)["upstream"]
    out.print(f"registered {escape(namespace)} -> {escape(url)} ({row['tools']} tools)")


@app.command()
def attach(ctx: typer.Context, namespace: str, url: str, version: VersionOption = "") -> None:
    """Point NAMESPACE at a new endpoint (hot swap: no call in flight fails)."""
    with handle_errors():
        path = f"/admin/upstreams/{namespace}/attach"
        row = _request("POST", *_where(ctx), path, json={"url": url, "version": version})
    out.print(f"attached {escape(namespace)} -> {escape(url)} {escape(row['upstream']['version'])}")


@app.command()
def unregister(ctx: typer.Context, namespace: str) -> None:
    """Remove NAMESPACE and its tools from the gateway."""
    with handle_errors():
        _request("DELETE", *_where(ctx), f"/admin/upstreams/{namespace}")
    out.print(f"unregistered {escape(namespace)}")


@app.command()
def held(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Tools held because their description or schema changed after registration."""
    with handle_errors():
        rows = _request("GET", *_where(ctx), "/admin/held")["held"]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no tool is held")
    for name, row in sorted(rows.items()):
        out.print(f"[bold]{escape(name)}[/]: {escape(row['definition'].get('description', ''))}")


@app.command()
def approve(ctx: typer.Context, tool: str) -> None:
    """Accept the new definition of a held tool (NAMESPACE.TOOL)."""
    with handle_errors():
        _request("POST", *_where(ctx), f"/admin/tools/{tool}/approve")
    out.print(f"approved {escape(tool)}")
