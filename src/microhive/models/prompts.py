"""The message conventions between the mesh and its models.

A real model reads these prompts as instructions; the offline model parses the
same text, so one convention serves both. Build messages with these helpers and
every provider -- including ``offline`` -- understands them.

**Planning** (:func:`planning_messages`): the system message starts with
``role: planner``, asks for one JSON object matching :data:`PLAN_SCHEMA`, and
lists the roles under an ``Available roles:`` header, one ``- name: description``
line each. The user message is ``Goal: <goal>``. The answer's text is the plan;
:func:`extract_json` reads it even when a model wraps it in a code fence.

**Sub-tasks** (:func:`task_messages`): the system message starts with
``role: <role>``; the user message is the instruction, then ``Project folder:``
(where relative file names live), then the task's inputs as ``- key: value``
lines under ``Inputs:``, then the results of the tasks it depends on, each as a
``<document source="NAME">...</document>`` block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from microhive.errors import InvalidInput
from microhive.models.types import Message, SystemMessage, UserMessage

__all__ = [
    "PLAN_SCHEMA",
    "ROLES_HEADER",
    "extract_json",
    "parse_documents",
    "parse_inputs",
    "parse_roles",
    "planning_messages",
    "role_of",
    "task_messages",
]

ROLES_HEADER = "Available roles:"

#: The JSON schema of a plan, as given to real models in the planning prompt.
PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["tasks"],
    "properties": {
        "goal": {"type": "string"},
        "tasks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "role", "instruction"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
                    "role": {"type": "string"},
                    "instruction": {"type": "string"},
                    "inputs": {"type": "object"},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

_PLANNER_PROMPT = """role: planner
You are the planner of a team of agents. Turn the user's goal into a plan: a small
directed acyclic graph of sub-tasks. Each sub-task has a short id (lowercase
letters, digits, '-'), the role that does it (only roles listed below), a precise
instruction, inputs (an object: for example the sub-topic, the files to read,
and the file to save to) and depends_on (ids of tasks whose results it needs).
Independent tasks must not depend on each other, so they can run in parallel.
Respond with ONE JSON object and nothing else, matching this JSON schema:
{schema}

{header}
{roles}"""

_ROLE_LINE = re.compile(r"^\s*[-*]\s*([a-z][a-z0-9-]*)\s*:\s*(.*?)\s*$")
_ROLE_DECL = re.compile(r"^\s*role:\s*([a-z][a-z0-9-]*)\s*$", re.IGNORECASE | re.MULTILINE)
_INPUT_LINE = re.compile(r"^\s*-\s*([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")
_DOCUMENT = re.compile(r'<document source="([^"]*)">\n?(.*?)\n?</document>', re.DOTALL)


def planning_messages(goal: str, roles: Mapping[str, str]) -> list[Message]:
    """The messages asking a model to plan ``goal`` with ``roles`` (name: what it does)."""
    if not goal.strip():
        raise InvalidInput("the goal must not be empty")
    if not roles:
        raise InvalidInput("planning needs at least one role")
    lines = "\n".join(f"- {name}: {' '.join(desc.split())}" for name, desc in roles.items())
    system = _PLANNER_PROMPT.format(
        schema=json.dumps(PLAN_SCHEMA), header=ROLES_HEADER, roles=lines
    )
    return [SystemMessage(system), UserMessage(f"Goal: {goal.strip()}")]


def task_messages(
    role: str,
    instruction: str,
    *,
    inputs: Mapping[str, Any] | None = None,
    project: str | None = None,
    documents: Mapping[str, str] | None = None,
    role_prompt: str = "",
) -> list[Message]:
    """The messages for one sub-task given to a worker of ``role``.

    ``documents`` are texts the task should use (usually the results of the tasks it
    depends on), keyed by a source name.
    """
    if not instruction.strip():
        raise InvalidInput("a sub-task needs an instruction")
    system = f"role: {role}\n" + (
        role_prompt.strip()
        or f"You are the {role} of a team of agents. Use the tools you are given to do the "
        "task, save what the task asks you to save, then answer with a short summary."
    )
    parts = [instruction.strip()]
    if project:
        parts.append(f"Project folder: {project}")
    if inputs:
        lines = [f"- {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in inputs.items()]
        parts.append("Inputs:\n" + "\n".join(lines))
    for name, text in (documents or {}).items():
        parts.append(f'<document source="{name}">\n{text}\n</document>')
    return [SystemMessage(system), UserMessage("\n\n".join(parts))]


def role_of(system_text: str) -> str | None:
    """The role a system message declares with a ``role: NAME`` line, if any."""
    found = _ROLE_DECL.search(system_text)
    return found.group(1).lower() if found else None


def parse_roles(system_text: str) -> dict[str, str]:
    """The ``- name: description`` lines under ``Available roles:`` (empty if absent)."""
    at = system_text.find(ROLES_HEADER)
    if at < 0:
        return {}
    roles: dict[str, str] = {}
    for line in system_text[at + len(ROLES_HEADER) :].splitlines():
        if not line.strip():
            if roles:
                break
            continue
        found = _ROLE_LINE.match(line)
        if not found:
            break
        roles[found.group(1)] = found.group(2)
    return roles


def parse_inputs(user_text: str) -> dict[str, Any]:
    """The ``- key: value`` lines under ``Inputs:`` (JSON values decoded when they parse)."""
    at = user_text.find("Inputs:")
    if at < 0:
        return {}
    out: dict[str, Any] = {}
    for line in user_text[at + len("Inputs:") :].splitlines()[1:]:
        found = _INPUT_LINE.match(line)
        if not found:
            break
        key, raw = found.groups()
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def parse_documents(text: str) -> list[tuple[str, str]]:
    """The ``<document source="NAME">`` blocks of a message, as (name, text) pairs."""
    return [(m.group(1), m.group(2)) for m in _DOCUMENT.finditer(text)]


def extract_json(text: str) -> Any:
    """The first JSON object in a model's answer (inside a code fence or bare)."""
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.DOTALL)
    candidates = [fenced.group(1)] if fenced else []
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start : text.rfind("}") + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise InvalidInput(f"expected a JSON object in the model's answer, got: {text[:200]!r}")
