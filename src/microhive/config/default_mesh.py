"""The default mesh: every microhive service, wired together on one machine.

``microhive init`` writes it (with comments, see :mod:`microhive.config.starter`)
and ``microhive demo`` runs it. Ports are ``base_port + offset`` so a second
copy can run beside the first by choosing another base.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BASE_PORT", "SERVICE_OFFSETS", "services_yaml"]

DEFAULT_BASE_PORT = 8700

#: service name -> port offset from the base port (one port per replica).
SERVICE_OFFSETS: dict[str, int] = {
    "gateway": 0,
    "workspace": 1,
    "orchestrator": 2,
    "calculator-rest": 3,
    "calculator": 4,
    "pdf": 5,
    "web": 6,
    "sentiment": 7,
    "notifier": 8,
    "hive-indexer": 9,
    "hive-sentiment": 10,
    "hive-notifier": 11,
    "researcher": 12,  # 2 replicas: 12 and 13
    "summarizer": 14,
    "writer": 15,
}


def services_yaml(base_port: int = DEFAULT_BASE_PORT, *, inbox: str = "inbox") -> str:
    """The ``services:`` section of the default mesh, commented, as YAML text."""
    p = {name: base_port + off for name, off in SERVICE_OFFSETS.items()}
    return f"""\
services:
  # --- tools behind one MCP endpoint ------------------------------------------
  gateway:                  # registry + MCP router + tool search, at /mcp
    kind: gateway
    port: {p["gateway"]}
    depends_on: [workspace, calculator, pdf, web, sentiment, notifier]
  workspace:                # versioned files, hybrid search, events, webhooks
    kind: workspace
    port: {p["workspace"]}
    max_body_bytes: 26214400
  calculator-rest:          # a plain REST service with an OpenAPI document...
    kind: calculator-rest
    port: {p["calculator-rest"]}
    settings: {{mcp: false}}
  calculator:               # ...served as MCP tools with no per-endpoint code
    kind: openapi-tools
    port: {p["calculator"]}
    depends_on: [calculator-rest]
    settings: {{upstream: calculator-rest}}
  pdf:                      # text and metadata of PDFs
    kind: pdf
    port: {p["pdf"]}
    settings: {{root: {inbox}}}
  web:                      # fetch a page's readable text (no private targets)
    kind: web
    port: {p["web"]}
  sentiment:                # offline sentiment analysis as a tool
    kind: sentiment
    port: {p["sentiment"]}
  notifier:                 # deliver a message to a log file (or a webhook)
    kind: notifier
    port: {p["notifier"]}
    settings: {{sink: .microhive/notifications.jsonl}}

  # --- the event-driven hive: each reacts to file.created on its own ----------
  hive-indexer:
    kind: hive-indexer
    port: {p["hive-indexer"]}
  hive-sentiment:
    kind: hive-sentiment
    port: {p["hive-sentiment"]}
  hive-notifier:
    kind: hive-notifier
    port: {p["hive-notifier"]}
    settings: {{sink: .microhive/hive-notifications.jsonl}}

  # --- the agent: an orchestrator and stateless workers -----------------------
  orchestrator:             # POST /runs, GET /runs/ID/events (SSE)
    kind: orchestrator
    port: {p["orchestrator"]}
    depends_on: [gateway, workspace]
  researcher:
    kind: worker
    port: {p["researcher"]}
    replicas: 2             # two processes share the researcher queue
    depends_on: [gateway]
    settings: {{role: researcher}}
  summarizer:
    kind: worker
    port: {p["summarizer"]}
    depends_on: [gateway]
    settings: {{role: summarizer}}
  writer:
    kind: worker
    port: {p["writer"]}
    depends_on: [gateway]
    settings: {{role: writer}}
"""
