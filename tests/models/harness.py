"""A tiny in-test environment for agent conversations: files and three tools.

It plays the part the gateway and the workspace play in the mesh, so the offline
model's tool use can be driven end to end without any of our other services.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from microhive.models import (
    ChatResult,
    Message,
    ModelProvider,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
)
from microhive.models.offline.text import terms

CORPUS = Path(__file__).parent / "corpus"

TOOLS = [
    ToolSpec(
        "workspace.search",
        "Search the workspace files by keywords.",
        {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query"],
        },
    ),
    ToolSpec(
        "workspace.read",
        "Read a file of the workspace.",
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    ),
    ToolSpec(
        "workspace.write",
        "Write a file to the workspace.",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    ),
    ToolSpec(
        "pdf.extract_text",
        "Extract the text of a PDF file.",
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    ),
]


def corpus() -> dict[str, str]:
    return {f"docs/{p.name}": p.read_text(encoding="utf-8") for p in sorted(CORPUS.iterdir())}


@dataclass
class Workspace:
    """Files in a dict; executes the tool calls of :data:`TOOLS`."""

    files: dict[str, str] = field(default_factory=corpus)
    pdfs: dict[str, str] = field(default_factory=dict)
    log: list[ToolCall] = field(default_factory=list)

    def run(self, call: ToolCall) -> ToolResultMessage:
        self.log.append(call)
        args = call.arguments
        if call.name == "workspace.search":
            wanted = set(terms(str(args["query"])))
            hits = []
            for path, text in self.files.items():
                score = len(wanted & set(terms(text)))
                if score:
                    hits.append({"path": path, "score": score, "snippet": text[:120]})
            hits.sort(key=lambda h: (-int(h["score"]), str(h["path"])))  # type: ignore[call-overload]
            limit = int(args.get("limit", 5))
            return ToolResultMessage(call.id, json.dumps({"hits": hits[:limit]}), call.name)
        if call.name == "workspace.read":
            path = str(args["path"])
            if path not in self.files:
                return ToolResultMessage(call.id, f"no such file: {path}", call.name, True)
            info = {"path": path, "version": 1, "content_type": "text/markdown"}
            body = {"info": info, "text": self.files[path]}  # the workspace's read shape
            return ToolResultMessage(call.id, json.dumps(body), call.name)
        if call.name == "workspace.write":
            self.files[str(args["path"])] = str(args["content"])
            return ToolResultMessage(call.id, json.dumps({"ok": True}), call.name)
        if call.name == "pdf.extract_text":
            path = str(args["path"])
            if path not in self.pdfs:
                return ToolResultMessage(call.id, f"no such PDF: {path}", call.name, True)
            return ToolResultMessage(call.id, json.dumps({"text": self.pdfs[path]}), call.name)
        return ToolResultMessage(call.id, f"unknown tool {call.name}", call.name, True)


async def run_agent(
    model: ModelProvider,
    messages: list[Message],
    workspace: Workspace,
    tools: list[ToolSpec] | None = None,
    max_steps: int = 12,
) -> tuple[ChatResult, list[ChatResult]]:
    """The agent loop: model -> tools -> model until a final answer (or fail)."""
    history = list(messages)
    steps: list[ChatResult] = []
    for _ in range(max_steps):
        result = await model.chat(history, tools=TOOLS if tools is None else tools)
        steps.append(result)
        history.append(result.message())
        if not result.tool_calls:
            return result, steps
        history.extend(workspace.run(c) for c in result.tool_calls)
    raise AssertionError(f"no final answer after {max_steps} steps: {steps}")
