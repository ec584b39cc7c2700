"""Rich tables for the mesh commands (kept apart so the commands read as plain flow)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from microhive.supervisor import config_failure

__all__ = ["failures", "log_line", "progress_table", "status_table", "uptime"]

_STYLE = {
    "ready": "green",
    "alive": "green",
    "starting": "yellow",
    "pending": "yellow",
    "restarting": "yellow",
    "stopping": "yellow",
    "not-ready": "yellow",
    "failed": "bold red",
    "blocked": "red",
    "down": "red",
    "stopped": "dim",
}


def _styled(value: str | None) -> Text:
    value = value or "-"
    return Text(value, style=_STYLE.get(value, ""))


def uptime(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12s``; ``-`` when not running."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def progress_table(replicas: list[dict[str, Any]]) -> Table:
    """The live table ``up`` shows while the mesh starts."""
    table = Table(box=None, pad_edge=False)
    for col in ("SERVICE", "REPLICA", "PID", "PORT", "STATE"):
        table.add_column(col)
    for r in replicas:
        table.add_row(
            r["service"], str(r["replica"]), _dash(r.get("pid")), _dash(r.get("port")),
            _styled(r.get("state")),
        )  # fmt: skip
    return table


def status_table(services: list[dict[str, Any]]) -> Table:
    """``microhive status``: one row per replica, with the live health probe."""
    table = Table(box=None, pad_edge=False)
    for col in ("SERVICE", "REPLICA", "PID", "PORT", "STATE", "HEALTH", "RESTARTS", "UPTIME"):
        table.add_column(col)
    for r in services:
        table.add_row(
            r["service"], str(r["replica"]), _dash(r.get("pid")), _dash(r.get("port")),
            _styled(r.get("state")), _styled(r.get("health")), str(r.get("restarts", 0)),
            uptime(r.get("uptime")),
        )  # fmt: skip
    return table


_LEVEL_STYLE = {"error": "red", "critical": "bold red", "warning": "yellow", "debug": "dim"}


def log_line(line: str) -> Text:
    """A service's log line for people: a JSON record as ``time level logger: message``.

    The service runtime logs JSON (one record per line); shown raw, a message is
    buried in escaping, and a traceback is one long line of ``\\n``. Any other
    line is shown as it is.
    """
    record: Any = None
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
    if not isinstance(record, dict) or not isinstance(record.get("msg"), str):
        return Text(line)
    level = str(record.get("level") or "")
    stamp = str(record.get("ts") or "")[11:23]  # the time of day: the date is in the log
    text = Text(f"{stamp} ", style="dim")
    text.append(f"{level:<7} ", style=_LEVEL_STYLE.get(level, ""))
    text.append(f"{record.get('logger') or '-'}: ", style="dim")
    text.append(record["msg"])
    if isinstance(record.get("exc"), str):
        text.append("\n" + record["exc"].rstrip("\n"), style="red")
    return text


def failures(console: Console, replicas: list[dict[str, Any]]) -> None:
    """For each failed or blocked replica: why, and its last log lines.

    A configuration error (exit code 78) is one line -- its reason is the
    service's own message, and the log before it is just the start-up.
    """
    for r in replicas:
        if r.get("state") not in ("failed", "blocked"):
            continue
        title = f"{r['service']}-{r['replica']} {r['state']}: {r.get('reason') or 'unknown'}"
        if r.get("state") == "blocked":
            console.print(Text(title, style="red"))
            continue
        if config_failure(r.get("exit_code"), str(r.get("kind") or "")):
            console.print(Text(title, style="bold red"), soft_wrap=True)
            console.print(Text(f"  log: {r.get('log')}", style="dim"), soft_wrap=True)
            continue
        lines = r.get("last_log") or []
        body: Any = (
            Text("\n").join(log_line(line) for line in lines)
            if lines
            else Text("(no log output)", style="dim")
        )
        footer = Text(f"log: {r.get('log')}", style="dim")
        console.print(
            Panel(
                Group(body, footer),
                title=escape(title),
                title_align="left",
                border_style="red",
            )
        )
