"""The shared workspace: versioned files that index themselves, over MCP and REST.

::

    from microhive.workspace import Workspace, WorkspaceSettings

    async with Workspace(WorkspaceSettings(store="file://./ws", embedder="minilm")) as ws:
        info = await ws.write("project/findings.json", '{"claim": "..."}', author="researcher")
        hits = await ws.search("what did the researcher find?")

Layout: :mod:`~microhive.workspace.paths` (path rules); :mod:`.backend` (the
interface, by URL scheme) with :mod:`.local` + :mod:`.index` (embedded: blobs,
SQLite, FTS5, numpy vectors) and :mod:`.postgres` (PostgreSQL); :mod:`.events`
(outbox -> bus); :mod:`.webhooks` (Standard Webhooks delivery); :mod:`.rest`,
:mod:`.mcp_tools` and :mod:`.service` (the ``workspace`` service kind).
"""

from microhive.workspace.backend import WorkspaceBackend, open_backend
from microhive.workspace.core import Workspace, WorkspaceSettings
from microhive.workspace.model import (
    EVENT_TYPES,
    FileInfo,
    FileTooLarge,
    Grant,
    Page,
    PermissionDenied,
    SearchHit,
)
from microhive.workspace.webhooks import DEFAULT_SCHEDULE, Webhook, sign

__all__ = [
    "DEFAULT_SCHEDULE",
    "EVENT_TYPES",
    "FileInfo",
    "FileTooLarge",
    "Grant",
    "Page",
    "PermissionDenied",
    "SearchHit",
    "Webhook",
    "Workspace",
    "WorkspaceBackend",
    "WorkspaceSettings",
    "open_backend",
    "sign",
]
