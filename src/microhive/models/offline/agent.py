"""The offline tool-using agent: deterministic rules instead of a language model.

Given a sub-task (see :mod:`microhive.models.prompts` for the message shape) and
the tools on offer, each call looks at the conversation so far and takes the next
step that has not been taken yet, one batch of tool calls per step:

1. an *outline* task writes its outline and stops;
2. extract the text of every PDF the task names (a ``*pdf*`` tool);
3. read every other file the task names (a ``*.read*`` tool);
4. search (a ``*search*`` tool) with the task's key terms, when the task is
   research or names nothing to read;
5. read the top files the search found;
6. save to each file the task says to save to (a ``*.write*`` tool): findings
   JSON for ``.json``, the Markdown brief otherwise;
7. answer with the extractive brief composed from everything read.

A call is never repeated with the same arguments, failed calls are skipped, and
arguments are built from each tool's JSON schema (``query``/``q``, ``path``/
``file``, ``content``/``text``, ...); a tool whose required arguments cannot be
filled is not used.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from microhive.models.offline.brief import (
    OFFLINE_NOTE,
    compose_brief,
    findings_document,
    outline_document,
    sources_from,
)
from microhive.models.offline.text import Source, key_terms
from microhive.models.prompts import MATERIAL_HEADER, parse_documents, parse_inputs, role_of
from microhive.models.types import (
    AssistantMessage,
    ChatRequest,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    UserMessage,
)

__all__ = ["Action", "next_action"]

_FILE = re.compile(r"(?<![\w/.-])([\w-][\w./-]*\.(?:pdf|md|txt|json|csv|html?))\b", re.IGNORECASE)
_TARGET = re.compile(
    r"\b(?:save|write|store|put|record)\w*\b[^.\n]*?\b(?:to|into|as|in)\s+`?"
    r"([\w-][\w./-]*\.(?:md|txt|json|csv|html?))",
    re.IGNORECASE,
)
_PROJECT = re.compile(r"^\s*project folder:\s*`?([^`\s]+)`?\s*$", re.IGNORECASE | re.MULTILINE)
_SEARCH_WORD = re.compile(r"\bsearch\b", re.IGNORECASE)
_PURPOSES: dict[str, tuple[str, ...]] = {
    "path": ("path", "file", "filename", "file_path", "name", "uri", "url", "source", "key"),
    "query": ("query", "q", "text", "terms", "search", "keywords", "question"),
    "content": ("content", "text", "data", "body"),
    "limit": ("limit", "k", "top_k", "max_results", "n"),
}
MAX_READS = 6
MAX_FOLLOW_UPS = 3


@dataclass(slots=True)
class Action:
    """What the agent does next: call tools, or answer with text."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(slots=True)
class _Task:
    role: str
    instruction: str
    inputs: dict[str, Any]
    project: str
    documents: list[Source]
    tools: Sequence[ToolSpec]
    calls: dict[str, ToolCall]  # by id
    results: dict[str, ToolResultMessage]  # by tool call id
    done: set[str]  # keys of calls already made

    @property
    def topic(self) -> str:
        for key in ("subtopic", "topic", "title"):
            if isinstance(self.inputs.get(key), str) and self.inputs[key].strip():
                return str(self.inputs[key]).strip()
        return " ".join(key_terms(self.instruction, 6)) or "the task"

    @property
    def query(self) -> str:
        if isinstance(self.inputs.get("query"), str):
            return str(self.inputs["query"])
        return " ".join(key_terms(self.instruction, 8)) or self.topic


def _key(name: str, args: Mapping[str, Any]) -> str:
    return name + json.dumps(args, sort_keys=True, default=str)


def _read_task(request: ChatRequest) -> _Task:
    system = "\n".join(m.content for m in request.messages if isinstance(m, SystemMessage))
    users = [m.content for m in request.messages if isinstance(m, UserMessage)]
    text = "\n\n".join(users)
    # The task is the first user message that is not the material before it.
    task = next((u for u in users if not u.startswith(MATERIAL_HEADER)), "")
    instruction = task.split("\n\n", 1)[0] if task else ""
    calls: dict[str, ToolCall] = {}
    results: dict[str, ToolResultMessage] = {}
    for m in request.messages:
        if isinstance(m, AssistantMessage):
            calls.update((c.id, c) for c in m.tool_calls)
        elif isinstance(m, ToolResultMessage):
            results[m.tool_call_id] = m
    project = _PROJECT.search(text)
    documents = [Source(name, body) for name, body in parse_documents(text)]
    return _Task(
        role=role_of(system) or "",
        instruction=instruction,
        inputs=parse_inputs(text),
        project=project.group(1).strip("/") if project else "",
        documents=documents,
        tools=request.tools,
        calls=calls,
        results=results,
        done={_key(c.name, c.arguments) for c in calls.values()},
    )


def _find_tool(tools: Sequence[ToolSpec], kind: str) -> ToolSpec | None:
    """The tool for a kind of step, preferring the workspace's own tools."""

    def leaf(t: ToolSpec) -> str:
        # "workspace.read" directly, "workspace_read" through the gateway -> "read"
        name = t.name.lower()
        for sep in (".", "_"):
            if sep in name:
                return name.split(sep, 1)[1]
        return name

    def ok(t: ToolSpec) -> bool:
        name, last = t.name.lower(), leaf(t)
        if kind == "pdf":
            return "pdf" in name and not last.startswith(("write", "save"))
        if "pdf" in name:
            return False
        if kind == "search":
            return "search" in last
        if kind == "read":
            return last.startswith(("read", "get_file", "cat", "open")) or last == "get"
        if kind == "write":
            return last.startswith(("write", "save", "put", "create_file"))
        return False

    def rank(t: ToolSpec) -> tuple[bool, bool, str]:
        # e.g. prefer pdf.pdf_text over pdf.pdf_info, and the workspace's own tools
        texty = any(w in leaf(t) for w in ("text", "extract", "read", "search", "write"))
        return (not texty, not t.name.startswith("workspace"), t.name)

    found = sorted((t for t in tools if ok(t)), key=rank)
    return found[0] if found else None


def _arguments(tool: ToolSpec, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """Arguments for ``tool`` from purpose -> value, following its schema; None if unfillable."""
    props = tool.parameters.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = tool.parameters.get("required")
    required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    args: dict[str, Any] = {}
    if not props:
        return {k: v for k, v in values.items() if k != "limit"}
    for purpose, value in values.items():
        for candidate in _PURPOSES[purpose]:
            if candidate in props and candidate not in args:
                schema = props[candidate] if isinstance(props[candidate], Mapping) else {}
                if purpose == "content" and schema.get("type") == "object":
                    with contextlib.suppress(TypeError, json.JSONDecodeError):
                        value = json.loads(value)
                args[candidate] = value
                break
    if any(r not in args and "default" not in (props.get(r) or {}) for r in required):
        return None
    return args


def _files(task: _Task) -> tuple[list[str], list[str], list[str]]:
    """(targets to save to, files to read, PDFs to extract) named by the task."""
    targets = [m.group(1) for m in _TARGET.finditer(task.instruction)]
    save_to = task.inputs.get("save_to")
    if isinstance(save_to, str):
        targets.append(save_to)
    named = [m.group(1) for m in _FILE.finditer(task.instruction)]
    read = task.inputs.get("read")
    named += [read] if isinstance(read, str) else [r for r in read or () if isinstance(r, str)]
    targets = list(dict.fromkeys(targets))
    reads = [f for f in dict.fromkeys(named) if f not in targets]
    pdfs = [f for f in reads if f.lower().endswith(".pdf")]
    return targets, [f for f in reads if f not in pdfs], pdfs


def _in_project(task: _Task, name: str) -> str:
    if not task.project or name.startswith(task.project + "/") or name.startswith("/"):
        return name
    return f"{task.project}/{name}"


def _calls(task: _Task, tool: ToolSpec | None, values: list[dict[str, Any]]) -> list[ToolCall]:
    """New (never made before) calls of ``tool``, one per set of values."""
    out: list[ToolCall] = []
    if tool is None:
        return out
    for v in values:
        args = _arguments(tool, v)
        if args is None:
            continue
        key = _key(tool.name, args)
        if key in task.done:
            continue
        task.done.add(key)
        out.append(ToolCall(f"call_{len(task.calls) + len(out) + 1}", tool.name, args))
    return out


def _sources(task: _Task, skip: set[str]) -> list[Source]:
    """Every document in the conversation: task documents, then tool results in order."""
    found = list(task.documents)
    for call_id, result in task.results.items():
        call = task.calls.get(call_id)
        if result.is_error or (call is not None and call.name in skip):
            continue
        name = call.name if call else (result.name or "tool")
        if call is not None:
            for purpose in ("path",):
                for candidate in _PURPOSES[purpose]:
                    if isinstance(call.arguments.get(candidate), str):
                        name = str(call.arguments[candidate])
                        break
        found.extend(sources_from(result.content, name))
    return found


def _search_hits(task: _Task, search: ToolSpec) -> list[str]:
    """File paths named in the search results, best first."""
    hits: list[str] = []
    for call_id, result in task.results.items():
        call = task.calls.get(call_id)
        if call is None or call.name != search.name or result.is_error:
            continue
        for found in _FILE.finditer(result.content):
            if found.group(1) not in hits:
                hits.append(found.group(1))
    return hits


def next_action(request: ChatRequest) -> Action:
    """The next step of the offline agent for this conversation (see module docstring)."""
    task = _read_task(request)
    targets, reads, pdfs = _files(task)
    search = _find_tool(task.tools, "search")
    read = _find_tool(task.tools, "read")
    write = _find_tool(task.tools, "write")
    pdf = _find_tool(task.tools, "pdf")
    sections = task.inputs.get("sections")
    sections = [str(s) for s in sections] if isinstance(sections, list) else []
    outline = task.instruction.lower().startswith("outline")
    if outline:
        document = outline_document(task.topic, sections)
        batch = _calls(
            task, write, [{"path": _in_project(task, t), "content": document} for t in targets]
        )
        return Action(tool_calls=batch) if batch else Action(text=document)
    steps: list[list[ToolCall]] = [
        _calls(task, pdf, [{"path": p} for p in pdfs[:MAX_READS]]),
        _calls(task, read, [{"path": _in_project(task, f)} for f in reads[:MAX_READS]]),
    ]
    wants_search = (
        not reads or "research" in task.role or bool(_SEARCH_WORD.search(task.instruction))
    )
    if search is not None and wants_search:
        steps.append(_calls(task, search, [{"query": task.query, "limit": 5}]))
        hits = [h for h in _search_hits(task, search) if h not in reads][:MAX_FOLLOW_UPS]
        steps.append(_calls(task, pdf, [{"path": h} for h in hits if h.lower().endswith(".pdf")]))
        steps.append(
            _calls(task, read, [{"path": h} for h in hits if not h.lower().endswith(".pdf")])
        )
    for batch in steps:
        if batch:
            return Action(tool_calls=batch)
    skip = {write.name} if write else set()
    sources = _sources(task, skip)
    query = key_terms(task.query, 8)
    brief = compose_brief(task.topic, sources, query=query, sections=sections)
    writes = []
    for target in targets:
        content = (
            findings_document(task.topic, brief, sources)
            if target.lower().endswith(".json")
            else brief.markdown
        )
        writes.append({"path": _in_project(task, target), "content": content})
    batch = _calls(task, write, writes)
    if batch:
        return Action(tool_calls=batch)
    saved = [
        str(c.arguments.get("path") or next(iter(c.arguments.values()), ""))
        for cid, c in task.calls.items()
        if write and c.name == write.name and cid in task.results and not task.results[cid].is_error
    ]
    text = brief.markdown
    if saved:
        text += "\nSaved: " + ", ".join(f"`{s}`" for s in saved) + "\n"
    if OFFLINE_NOTE not in text:
        text = f"{OFFLINE_NOTE}\n\n{text}"
    return Action(text=text)
