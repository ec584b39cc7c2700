"""The workspace as MCP tools: list, read, write, search, info, versions.

Built on :class:`microhive.mcp.server.ToolService`, so every call decodes the
caller's ``_meta`` call context (trace, hops, deadline) and the write records the
caller's trace id. Binary files are returned base64-encoded; text as text.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from microhive.mcp.server import ToolService
from microhive.workspace.core import Workspace
from microhive.workspace.text import is_indexable

__all__ = ["workspace_tools"]


def workspace_tools(ws: Workspace, name: str = "workspace") -> ToolService:
    """A ToolService whose tools act on ``ws`` (full access; guard the endpoint)."""
    svc = ToolService(
        name,
        description="Shared workspace: versioned files with hybrid search.",
        instructions="Paths are relative, e.g. 'project/findings.json'. Use search to find "
        "content, read to fetch it, write to save (pass expected_version to avoid "
        "overwriting someone else's change).",
    )

    @svc.tool(name="list", read_only=True, idempotent=True)
    async def list_files(
        folder: str = "",
        glob: str | None = None,
        recursive: bool = True,
        limit: int = 100,
        cursor: str | None = None,
        workspace: str | None = None,
    ) -> dict[str, Any]:
        """List files in a folder of the workspace.

        Args:
            folder: folder to list ('' for the root)
            glob: optional pattern such as '*.md' or 'notes/**/*.json'
            recursive: include files in sub-folders
            limit: page size (1-1000)
            cursor: next_cursor from the previous page
            workspace: workspace name (default workspace when omitted)
        """
        page = await ws.list(
            folder, workspace=workspace, glob=glob, recursive=recursive, limit=limit, cursor=cursor
        )
        return page.to_dict()

    @svc.tool(read_only=True, idempotent=True)
    async def read(
        path: str, version: int | None = None, workspace: str | None = None
    ) -> dict[str, Any]:
        """Read a file (text, or base64 for binary files).

        Args:
            path: file path, e.g. 'project/findings.json'
            version: an older version to read (default: current)
            workspace: workspace name (default workspace when omitted)
        """
        info, data = await ws.read(path, workspace=workspace, version=version)
        out: dict[str, Any] = {"info": info.to_dict()}
        if is_indexable(info.content_type) and info.content_type != "application/pdf":
            out["text"] = data.decode("utf-8", errors="replace")
        else:
            out["base64"] = base64.b64encode(data).decode()
        return out

    @svc.tool(idempotent=False)
    async def write(
        path: str,
        content: str,
        encoding: Literal["text", "base64"] = "text",
        expected_version: int | None = None,
        append: bool = False,
        idempotency_key: str | None = None,
        author: str | None = None,
        workspace: str | None = None,
    ) -> dict[str, Any]:
        """Write (create or replace) or append to a file; every write is a new version.

        Args:
            path: file path, e.g. 'project/report.md'
            content: the content (text, or base64 when encoding='base64')
            encoding: 'text' or 'base64'
            expected_version: version you last read (0: must not exist); refused if stale
            append: append instead of replace
            idempotency_key: the same key again applies the write only once
            author: the writer's role, recorded in the metadata
            workspace: workspace name (default workspace when omitted)
        """
        data = base64.b64decode(content) if encoding == "base64" else content.encode("utf-8")
        info = await ws.write(
            path,
            data,
            workspace=workspace,
            expected_version=expected_version,
            append=append,
            idempotency_key=idempotency_key,
            author=author,
        )
        return info.to_dict()

    @svc.tool(read_only=True, idempotent=True)
    async def search(
        query: str,
        folder: str | None = None,
        types: list[str] | None = None,
        limit: int = 10,
        mode: Literal["hybrid", "keyword", "vector"] = "hybrid",
        workspace: str | None = None,
    ) -> dict[str, Any]:
        """Search file contents (keyword + meaning); returns matching chunks with snippets.

        Args:
            query: what to look for, in words
            folder: only files in this folder
            types: only these content types (prefixes such as 'text/', 'application/pdf')
            limit: number of hits (1-100)
            mode: 'hybrid' (default), 'keyword' or 'vector'
            workspace: workspace name (default workspace when omitted)
        """
        hits = await ws.search(
            query, workspace=workspace, folder=folder, content_types=types, limit=limit, mode=mode
        )
        return {"hits": [h.to_dict() for h in hits]}

    @svc.tool(read_only=True, idempotent=True)
    async def info(
        path: str, version: int | None = None, workspace: str | None = None
    ) -> dict[str, Any]:
        """Metadata of a file: version, size, type, author, trace id, index state.

        Args:
            path: file path
            version: an older version (default: current)
            workspace: workspace name (default workspace when omitted)
        """
        return (await ws.info(path, workspace=workspace, version=version)).to_dict()

    @svc.tool(read_only=True, idempotent=True)
    async def versions(path: str, workspace: str | None = None) -> dict[str, Any]:
        """Every version of a file, oldest first (deletions included).

        Args:
            path: file path
            workspace: workspace name (default workspace when omitted)
        """
        items = await ws.versions(path, workspace=workspace)
        return {"versions": [v.to_dict() for v in items]}

    return svc
