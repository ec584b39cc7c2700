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
``role: <role>``; when the task comes with documents (the results of the tasks
it depends on, prefetched files), a first user message starts with
:data:`MATERIAL_HEADER` and holds each as a ``<document source="NAME">...
</document>`` block; the last user message is the task: the instruction, then
``Project folder:`` (where relative file names live), then the task's inputs as
``- key: value`` lines under ``Inputs:``, then the files it must write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from microhive.errors import InvalidInput
from microhive.models.types import Message, SystemMessage, UserMessage

__all__ = [
    "MATERIAL_HEADER",
    "PLAN_LIMITS",
    "PLAN_SCHEMA",
    "ROLES_HEADER",
    "extract_json",
    "parse_documents",
    "parse_inputs",
    "parse_roles",
    "plan_schema",
    "planning_messages",
    "role_of",
    "task_messages",
]

ROLES_HEADER = "Available roles:"
#: The first line of the user message that carries a sub-task's documents.
MATERIAL_HEADER = "Material for the task below:"

#: Limits of a planned sub-task that keep a small model from looping inside its plan:
#: every list and string of the plan's schema is bounded.
PLAN_LIMITS: dict[str, int] = {
    "tasks": 8,
    "depends_on": 6,
    "read": 6,
    "instruction": 400,
    "text": 160,
}
_TASK_ID = "^[a-z][a-z0-9-]{0,31}$"


def plan_schema(
    roles: Sequence[str] | None = None, *, max_tasks: int | None = None, loose: bool = False
) -> dict[str, Any]:
    """The JSON schema of a plan, tight enough that a small model cannot write a bad one.

    Sub-tasks are listed in the order they can run, and each names the tasks it
    needs by *step number* (1 = the first): the schema gives step ``n`` the
    numbers 1..n-1 to choose from, so a plan that follows it has no cycle, no
    self-dependency and no dangling reference by construction. ``roles`` become
    an enum; every list and string is bounded and nothing recurses, so a model
    cannot loop inside it; every object lists all its properties as required and
    allows no others (empty strings and lists stand for "none").
    ``inputs.save_to`` is the file the sub-task must produce: its declared output.
    (:func:`microhive.orchestrator.plan.parse_plan` reads step numbers as well
    as ids.) The plan starts with ``task_count``; the schema has one branch per
    count, so once a model has said how many tasks it plans, it writes exactly
    that many -- a small model otherwise keeps adding tasks up to the maximum.

    ``loose=True`` gives a plain object schema with the same fields (every task
    may depend on any step number), for APIs that take no ``anyOf`` at the root
    or no ``prefixItems`` (Anthropic's tool input, OpenAI's strict mode).
    """
    lim = PLAN_LIMITS
    count = max_tasks or lim["tasks"]
    text = {"type": "string", "maxLength": lim["text"]}
    role: dict[str, Any] = {"type": "string"}
    if roles:
        role["enum"] = list(roles)

    def task(step: int) -> dict[str, Any]:
        earlier = step - 1
        depends: dict[str, Any] = {"type": "array", "maxItems": min(earlier, lim["depends_on"])}
        depends["items"] = (
            {"type": "integer", "minimum": 1, "maximum": earlier}
            if earlier
            else {"type": "integer"}
        )
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "role", "instruction", "inputs", "depends_on"],
            "properties": {
                "id": {"type": "string", "pattern": _TASK_ID},
                "role": role,
                "instruction": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": lim["instruction"],
                },
                "inputs": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["topic", "query", "read", "save_to"],
                    "properties": {
                        "topic": text,
                        "query": text,
                        "read": {"type": "array", "maxItems": lim["read"], "items": text},
                        "save_to": text,
                    },
                },
                "depends_on": depends,
            },
        }

    def plan_of(size: int) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["task_count", "tasks"],
            "properties": {
                "task_count": {"type": "integer", "enum": [size]},
                "tasks": {
                    "type": "array",
                    "minItems": size,
                    "maxItems": size,
                    "prefixItems": [task(step) for step in range(1, size + 1)],
                },
            },
        }

    if loose:
        plain = plan_of(count)
        tasks = plain["properties"]["tasks"]
        del tasks["prefixItems"]
        tasks["minItems"] = 1
        tasks["items"] = task(count + 1)
        plain["properties"]["task_count"] = {"type": "integer", "minimum": 1, "maximum": count}
        return plain
    # One branch per size: once the model has said task_count, the grammar holds it
    # to exactly that many tasks (a small model otherwise fills up to the maximum).
    return {"anyOf": [plan_of(size) for size in range(1, count + 1)]}


#: The JSON schema of a plan with any role names (see :func:`plan_schema`).
PLAN_SCHEMA: dict[str, Any] = plan_schema()

_PLANNER_PROMPT = """role: planner
You are the planner of a team of agents. Turn the user's goal into a plan: a short
list of sub-tasks, in the order they can run. Use as few as the goal needs, usually
2 to 5 and never more than {max_tasks}, and stop when the goal is covered. Each has:
- id: a short name (lowercase letters, digits, '-'), different for every task;
- role: who does it, one of the roles listed below;
- instruction: what to do, precisely;
- inputs: topic, query (what to search for), read (files to read) and save_to (the file
  the sub-task must write, relative to the project folder); "" and [] for none;
- depends_on: the step numbers (1 = the first task) of earlier tasks whose results it
  needs. Tasks that do not need each other's results must not depend on each other,
  so they can run in parallel.
First give task_count, the number of sub-tasks the goal needs, then exactly that many.
Answer with ONE JSON object and nothing else, like this:
{example}

{header}
{roles}"""


def _example(roles: Sequence[str]) -> str:
    first, last = roles[0], roles[-1]
    steps = [
        {
            "id": "gather",
            "role": first,
            "instruction": "Find the facts the goal needs and save them.",
            "inputs": {"topic": "...", "query": "...", "read": [], "save_to": "notes.json"},
            "depends_on": [],
        },
        {
            "id": "report",
            "role": last,
            "instruction": "Write the result from the notes.",
            "inputs": {"topic": "...", "query": "", "read": ["notes.json"], "save_to": "report.md"},
            "depends_on": [1],
        },
    ]
    return json.dumps({"task_count": 2, "tasks": steps})


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
        example=_example(list(roles)),
        max_tasks=PLAN_LIMITS["tasks"],
        header=ROLES_HEADER,
        roles=lines,
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
    outputs: Sequence[str] = (),
) -> list[Message]:
    """The messages for one sub-task given to a worker of ``role``.

    ``documents`` are texts the task should use (usually the results of the tasks it
    depends on), keyed by a source name. ``outputs`` are the workspace paths the
    task must write (its declared outputs, checked after the agent is done).
    """
    if not instruction.strip():
        raise InvalidInput("a sub-task needs an instruction")
    system = f"role: {role}\n" + (
        role_prompt.strip()
        or f"You are the {role} of a team of agents. Work step by step with the tools you "
        "are given: first get the facts the task needs (read, search, extract, calculate) "
        "and never guess them; then save what the task asks you to save (the task fails "
        "when a file it names is not written); then answer with a short summary."
    )
    parts = [instruction.strip()]
    if project:
        parts.append(f"Project folder: {project}")
    if inputs:
        lines = [f"- {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in inputs.items()]
        parts.append("Inputs:\n" + "\n".join(lines))
    if outputs:
        listed = "\n".join(f"- {path}" for path in outputs)
        parts.append("Write your result with the workspace write tool to:\n" + listed)
    task = UserMessage("\n\n".join(parts))
    if not documents:
        return [SystemMessage(system), task]
    # The material first and the task last: a small model answers what it read last,
    # and given documents at the end it tends to repeat them back.
    blocks = [
        f'<document source="{name}">\n{text}\n</document>' for name, text in documents.items()
    ]
    return [SystemMessage(system), UserMessage("\n\n".join([MATERIAL_HEADER, *blocks])), task]


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
