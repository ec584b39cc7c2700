"""``microhive webhooks``: Standard Webhooks subscriptions of the workspace service."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from microhive.cli._common import FileOption, JsonOption, err, handle_errors, out, print_json
from microhive.cli.ws import ServiceOption, UrlOption, client_for

__all__ = ["app"]

app = typer.Typer(
    name="webhooks", help="Webhook subscriptions: ls, add, test, redeliver.", no_args_is_help=True
)


@app.command("ls")
def ls(
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    json_out: JsonOption = False,
) -> None:
    """List subscriptions."""
    with handle_errors(), client_for(file, url, service) as client:
        hooks = client.webhooks()
    if json_out:
        print_json(hooks)
        return
    table = Table("id", "url", "events", "folder", "enabled", box=None)
    for h in hooks:
        state = "yes" if h["enabled"] else f"no ({h['disabled_reason']})"
        table.add_row(h["id"], escape(h["url"]), ",".join(h["events"]), h["folder"], state)
    out.print(table)


@app.command("add")
def add(
    target: Annotated[str, typer.Argument(help="The receiver's URL.")],
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="Event type (repeatable; default file.*)."),
    ] = None,
    folder: Annotated[str, typer.Option(help="Only files in this folder.")] = "",
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Subscribe a URL; prints the signing secret ONCE."""
    with handle_errors(), client_for(file, url, service) as client:
        hook = client.add_webhook(target, event or ["file.*"], folder)
    if json_out:
        print_json(hook)
        return
    out.print(f"{hook['id']} -> {escape(hook['url'])}")
    out.print(f"secret: {hook['secret']}")
    err.print("store the secret now: it is not shown again (rotate to get a new one)")


@app.command("test")
def send_test(
    hook_id: str, file: FileOption = None, url: UrlOption = None, service: ServiceOption = None
) -> None:
    """Send a webhook.test event to one subscription."""
    with handle_errors(), client_for(file, url, service) as client:
        result = client.webhook_action(hook_id, "test")
    out.print(f"queued delivery {result['delivery']}")


@app.command("rotate")
def rotate(
    hook_id: str, file: FileOption = None, url: UrlOption = None, service: ServiceOption = None
) -> None:
    """New signing secret (the old one keeps working for a grace period)."""
    with handle_errors(), client_for(file, url, service) as client:
        result = client.webhook_action(hook_id, "rotate")
    out.print(f"secret: {result['secret']}")


@app.command("deliveries")
def deliveries(
    hook_id: str,
    file: FileOption = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    json_out: JsonOption = False,
) -> None:
    """The delivery log of one subscription (newest first)."""
    with handle_errors(), client_for(file, url, service) as client:
        rows = client.webhook_action(hook_id, "deliveries")["deliveries"]
    if json_out:
        print_json(rows)
        return
    table = Table("id", "event", "status", "attempts", "last", box=None)
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["event_id"],
            r["status"],
            str(r["attempts"]),
            str(r["last_status"] or r["last_error"] or ""),
        )
    out.print(table)


@app.command("redeliver")
def redeliver(
    delivery_id: int, file: FileOption = None, url: UrlOption = None, service: ServiceOption = None
) -> None:
    """Queue a delivery again now."""
    with handle_errors(), client_for(file, url, service) as client:
        client.redeliver(delivery_id)
    out.print(f"delivery {delivery_id} queued")


@app.command("rm")
def rm(
    hook_id: str, file: FileOption = None, url: UrlOption = None, service: ServiceOption = None
) -> None:
    """Remove a subscription."""
    with handle_errors(), client_for(file, url, service) as client:
        client.remove_webhook(hook_id)
    out.print(f"removed {hook_id}")
