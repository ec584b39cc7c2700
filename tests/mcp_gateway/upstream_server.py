"""A small MCP tool service for the gateway tests (official SDK, streamable HTTP).

Run in-process with :func:`build`, or as a process::

    python tests/mcp_gateway/upstream_server.py PORT VERSION
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations


def build(version: str = "v1", *, name: str = "upstream") -> MCPServer:
    server = MCPServer(name, version=version)

    @server.tool(description="Echo a text back, with the version and the _meta received.")
    def echo(text: str, ctx: Context) -> dict[str, Any]:
        meta = ctx.request_context.meta
        received = dict(meta) if meta else {}
        return {"text": text, "version": version, "meta": received}

    @server.tool(
        description="Add two integers.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    def add(a: int, b: int) -> int:
        return a + b

    def add_again(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Change the description of 'add' and announce the change.")
    async def mutate(description: str, ctx: Context) -> str:
        server.remove_tool("add")
        server.add_tool(
            add_again,
            name="add",
            description=description,
            annotations=ToolAnnotations(read_only_hint=True),
        )
        await ctx.notify_tools_changed()
        return "changed"

    @server.tool(description="Which version of the service answered.")
    def whoami() -> str:
        return version

    @server.tool(description="Sleep for some seconds, then answer (a slow tool).")
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return f"{version} slept {seconds}"

    @server.tool(description="Answer with the time, but wait first.")
    async def pause_then_time(seconds: float = 0.05) -> float:
        await anyio.sleep(seconds)
        return time.time()

    return server


if __name__ == "__main__":
    import uvicorn

    port, version = int(sys.argv[1]), sys.argv[2]
    app = build(version).streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
