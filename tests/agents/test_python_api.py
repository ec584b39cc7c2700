"""One agent from Python, no orchestrator: the example in docs/orchestrator.md, run as is.

The example is taken from the docs ("Running one agent from Python") and run
against a real gateway (role tokens on) in front of a real workspace tool
service, both on loopback sockets, with the offline model. What counts is what
the agent did: the file it wrote in the workspace and the tool results it got.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from microhive.agents import AgentResult, StopReason
from microhive.mcp.registry import UpstreamSpec
from microhive.models import OFFLINE_NOTE
from microhive.workspace import Workspace, WorkspaceSettings
from microhive.workspace.mcp_tools import workspace_tools
from tests.mcp_gateway.harness import gateway, serving

DOCS = Path(__file__).parents[2] / "docs" / "orchestrator.md"

NOTES = """# Bees in cities

Urban beekeeping has grown quickly in many large cities. Rooftop hives in Paris
and London now number in the thousands. Honeybees compete with wild bees for
the flowers of city parks. Green roofs and wildflower verges give wild bees
food and places to nest. Cities with more flowering plants have more species
of wild bees.
"""


def _example() -> dict[str, Any]:
    """The docs' example: the first Python block of its section, executed."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Running one agent from Python", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "docs/orchestrator.md lost its Python example"
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(found.group(1), str(DOCS), "exec"), namespace)
    return namespace


async def test_the_documented_python_api_runs_one_agent_on_the_gateways_tools(
    tmp_path: Path,
) -> None:
    settings = WorkspaceSettings(store=f"file://{tmp_path}/ws", embedder="hashing")
    async with Workspace(settings) as ws:
        await ws.write("notes/bees.md", NOTES.encode(), author="test")
        tools = workspace_tools(ws)
        roles: dict[str, tuple[str | None, tuple[str, ...]]] = {
            "writer": ("writer-token", ("workspace.*",))
        }
        async with (
            serving(tools.asgi_app()) as ws_base,
            gateway([UpstreamSpec("workspace", f"{ws_base}/mcp")], roles=roles) as (_, base),
        ):
            write_brief = _example()["write_brief"]
            result: AgentResult = await write_brief(f"{base}/mcp", token="writer-token")

        assert result.stop is StopReason.FINAL_ANSWER, result.detail
        assert result.offline and OFFLINE_NOTE in result.text
        # It read the notes through the gateway and got their text back...
        calls = {c.name: c for c in result.tool_calls}
        assert set(calls) == {"workspace_read", "workspace_write"}
        assert not any(c.is_error for c in result.tool_calls)
        read = calls["workspace_read"]
        assert read.arguments["path"] == "notes/bees.md"
        assert "Rooftop hives in Paris" in json.dumps(read.data)
        # ...and wrote the brief, quoting and citing them, into the workspace.
        assert calls["workspace_write"].arguments["path"] == "briefs/bees.md"
        info, data = await ws.read("briefs/bees.md")
        brief = data.decode()
        assert OFFLINE_NOTE in brief
        assert "[notes/bees.md]" in brief
        assert "wild bees" in brief
        assert info.version == 1 and info.size == len(data)
