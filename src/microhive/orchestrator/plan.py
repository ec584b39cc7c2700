"""Plans: the DAG of sub-tasks a planner model proposes for a goal, and its checks.

A planner answers with JSON of this shape::

    {"tasks": [
        {"id": "outline", "role": "planner", "instruction": "...", "depends_on": []},
        {"id": "research-1", "role": "researcher", "instruction": "...",
         "inputs": {"query": "..."}, "depends_on": ["outline"]},
        ...
    ]}

:func:`parse_plan` accepts that (or the bare list), and refuses -- with a reason
the planner can be re-asked with -- a plan that is not JSON, has unknown keys,
repeats an id, depends on a missing task, has a cycle, names a role the mesh does
not have, or is too large.

**Declared outputs.** A sub-task's ``outputs`` are the files (relative to the
run's project folder) it must produce; when a plan gives none, the task's
``inputs.save_to`` (a file name or a list of them) is taken. The worker checks
them after its agent is done, and a sub-task whose outputs are missing fails,
whatever the agent said. Empty values (``""``, ``[]``, ``null``) in ``inputs``
mean "none" and are dropped: a structured-output schema makes a model fill every
field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from microhive.errors import InvalidInput

__all__ = [
    "MAX_OUTPUTS",
    "MAX_TASKS",
    "Plan",
    "PlanError",
    "PlannedTask",
    "parse_plan",
    "ready_tasks",
]

MAX_TASKS = 64
MAX_OUTPUTS = 8
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_OUTPUT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$")


class PlanError(InvalidInput):
    """The plan cannot be run; ``reason`` is fit to send back to the planner."""

    code = "invalid_plan"


class PlannedTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    role: str
    instruction: str = Field(min_length=1, max_length=8000)
    inputs: dict[str, Any] = Field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    #: Files (relative to the project folder) the sub-task must produce.
    outputs: tuple[str, ...] = Field(default=(), max_length=MAX_OUTPUTS)

    @model_validator(mode="before")
    @classmethod
    def _declared(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        inputs = data.get("inputs")
        if isinstance(inputs, dict):
            inputs = {k: v for k, v in inputs.items() if v not in ("", None, [], {})}
            data["inputs"] = inputs
            if "outputs" not in data and "save_to" in inputs:
                saved = inputs["save_to"]
                data["outputs"] = [saved] if isinstance(saved, str) else saved
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"task id {value!r} must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not isinstance(path, str) or not _OUTPUT.match(path) or ".." in path.split("/"):
                raise ValueError(
                    f"output {path!r} must be a relative file path (letters, digits, "
                    "'.', '_', '-', '/'; no '..', at most 200 characters)"
                )
        return tuple(dict.fromkeys(value))


class Plan(BaseModel):
    # Planners may add context beside the tasks (the goal, an "offline" label):
    # kept out of the way, while every task is checked strictly.
    model_config = ConfigDict(extra="ignore", frozen=True)

    tasks: tuple[PlannedTask, ...]

    def task(self, task_id: str) -> PlannedTask:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    def topological_order(self) -> list[str]:
        """Task ids with every dependency first (the plan is known to be acyclic)."""
        order: list[str] = []
        done: set[str] = set()
        pending = list(self.tasks)
        while pending:
            ready = [t for t in pending if set(t.depends_on) <= done]
            for task in ready:
                order.append(task.id)
                done.add(task.id)
            pending = [t for t in pending if t.id not in done]
        return order


def parse_plan(
    raw: str | dict[str, Any] | list[Any],
    *,
    roles: Iterable[str],
    max_tasks: int = MAX_TASKS,
) -> Plan:
    """Validate a planner's answer; PlanError says what is wrong."""
    data: Any = raw
    if isinstance(raw, str):
        data = _json_from_text(raw)
    if isinstance(data, list):
        data = {"tasks": data}
    data = _step_numbers(data)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "plan"
        raise PlanError(f"plan is malformed at {where}: {first['msg']}") from None
    _check(plan, set(roles), max_tasks)
    return plan


def _step_numbers(data: Any) -> Any:
    """Dependencies given as step numbers (1 = the first task) turned into task ids.

    The structured-output schema has models name earlier steps by number, which
    cannot be wrong; when every reference in a plan is a number, a repeated id is
    also made unique (``write``, ``write-2``), since nothing refers to it by name.
    """
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        return data
    tasks = data["tasks"]
    count = data.get("task_count")
    if isinstance(count, int) and not isinstance(count, bool) and 0 < count < len(tasks):
        tasks = tasks[:count]  # the model said how many; what it wrote past that is dropped
    if not all(isinstance(t, dict) for t in tasks):
        return data
    deps = [t.get("depends_on") or [] for t in tasks]
    refs = [d for group in deps if isinstance(group, list) for d in group]
    numbered = [d for d in refs if isinstance(d, int) and not isinstance(d, bool)]
    if not numbered:
        return {**data, "tasks": tasks}
    renamed = tasks
    if len(numbered) == len(refs):  # no reference by name: ids may be made unique
        seen: set[str] = set()
        renamed = []
        for t in tasks:
            base = str(t.get("id", "task"))
            tid, n = base, 1
            while tid in seen:
                n += 1
                tid = f"{base}-{n}"[:64]
            seen.add(tid)
            renamed.append({**t, "id": tid})
    out = []
    for index, t in enumerate(renamed, start=1):
        group = t.get("depends_on")
        if isinstance(group, list):
            resolved: list[Any] = []
            for d in group:
                if isinstance(d, int) and not isinstance(d, bool):
                    if not 1 <= d < index:
                        raise PlanError(
                            f"task {t.get('id')!r} (step {index}) depends on step {d}; a task "
                            "may only depend on earlier steps (1 = the first task)"
                        )
                    d = renamed[d - 1].get("id")
                if d not in resolved:
                    resolved.append(d)
            t = {**t, "depends_on": resolved}
        out.append(t)
    return {**data, "tasks": out}


def _json_from_text(text: str) -> Any:
    """Planners sometimes wrap JSON in prose or a code fence; take the JSON part."""
    stripped = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", stripped, re.DOTALL)
    if fence:
        stripped = fence.group(1).strip()
    else:
        start = min((i for i in (stripped.find("{"), stripped.find("[")) if i >= 0), default=-1)
        if start > 0:
            stripped = stripped[start:]
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise PlanError(f"plan is not valid JSON: {exc.msg} at position {exc.pos}") from None


def _check(plan: Plan, roles: set[str], max_tasks: int) -> None:
    if not plan.tasks:
        raise PlanError("plan has no tasks")
    if len(plan.tasks) > max_tasks:
        raise PlanError(f"plan has {len(plan.tasks)} tasks; at most {max_tasks} are allowed")
    ids = [t.id for t in plan.tasks]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PlanError(f"task ids must be unique; repeated: {', '.join(dupes)}")
    known = set(ids)
    for task in plan.tasks:
        if task.role not in roles:
            raise PlanError(
                f"task {task.id!r} names unknown role {task.role!r}; "
                f"known roles: {', '.join(sorted(roles)) or 'none'}"
            )
        for dep in task.depends_on:
            if dep not in known:
                raise PlanError(f"task {task.id!r} depends on {dep!r}, which is not in the plan")
            if dep == task.id:
                raise PlanError(f"task {task.id!r} depends on itself")
    cycle = _find_cycle(plan)
    if cycle:
        raise PlanError(f"plan has a dependency cycle: {' -> '.join(cycle)}")


def _find_cycle(plan: Plan) -> list[str] | None:
    deps = {t.id: t.depends_on for t in plan.tasks}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in deps[node]:
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if state.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in deps:
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def ready_tasks(plan: Plan, finished: Sequence[str], started: Sequence[str]) -> list[PlannedTask]:
    """Tasks whose dependencies are all finished and that have not started."""
    done = set(finished)
    busy = set(started) | done
    return [t for t in plan.tasks if t.id not in busy and set(t.depends_on) <= done]
