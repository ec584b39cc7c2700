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
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from microhive.errors import InvalidInput

__all__ = ["MAX_TASKS", "Plan", "PlanError", "PlannedTask", "parse_plan", "ready_tasks"]

MAX_TASKS = 64
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"task id {value!r} must be 1-64 letters, digits, '.', '_' or '-'")
        return value


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
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "plan"
        raise PlanError(f"plan is malformed at {where}: {first['msg']}") from None
    _check(plan, set(roles), max_tasks)
    return plan


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
