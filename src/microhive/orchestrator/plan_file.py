"""Plans people write: a run's plan given with its goal instead of asked of the planner.

A given plan has the shape a planner answers with (:mod:`microhive.orchestrator.plan`),
in YAML or JSON::

    goal: a brief about bees in cities          # optional: the run's goal by default
    tasks:
      - {id: research, role: researcher, instruction: "Research urban bees ...",
         inputs: {save_to: findings.json}}
      - {id: write, role: writer, instruction: "Write report.md from findings.json",
         depends_on: [research]}

:func:`given_plan` checks one (besides ``tasks``, only ``goal``, ``offline`` and
``source`` may be at the top, so a mistyped key is not silently ignored) with
:func:`~microhive.orchestrator.plan.parse_plan`. :func:`read_plan_file` reads a
file for ``microhive run --plan``, bounded: at most :data:`MAX_PLAN_BYTES`, and
YAML is composed with the safe loader and refused when its aliases expand to
more than :data:`MAX_PLAN_NODES` nodes (a "billion laughs" document costs a
few kilobytes to compose, then nothing more), when an alias refers to a node
that contains it, when a mapping repeats a key, or when it nests too deeply.
Every error is a :class:`~microhive.orchestrator.plan.PlanError` that names the
file and, where there is one, the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from microhive.orchestrator.plan import Plan, PlanError, parse_plan

__all__ = ["MAX_PLAN_BYTES", "MAX_PLAN_NODES", "given_plan", "parse_plan_text", "read_plan_file"]

MAX_PLAN_BYTES = 1024 * 1024
#: YAML nodes a plan may have once its aliases are expanded (64 tasks need ~2,000).
MAX_PLAN_NODES = 100_000
_TOP_KEYS = ("goal", "tasks", "offline", "source")


def given_plan(raw: Mapping[str, Any] | list[Any], *, roles: Iterable[str]) -> Plan:
    """A plan given with a goal, checked against the mesh's roles (PlanError if not fit)."""
    data: Any = {"tasks": raw} if isinstance(raw, list) else raw
    if not isinstance(data, Mapping):
        raise PlanError("a plan is an object with 'tasks' (or a list of tasks)")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise PlanError(
            f"plan has unknown keys: {', '.join(map(str, unknown))} (expected goal, tasks)"
        )
    goal = data.get("goal")
    if goal is not None and not isinstance(goal, str):
        raise PlanError("the plan's 'goal' must be a string")
    return parse_plan(dict(data), roles=roles)


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """The plan in a YAML or JSON file (``.json``), as data: ``{"tasks": [...], ...}``."""
    file = Path(path)
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise PlanError(f"{file}: cannot read the plan: {exc.strerror or exc}") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(f"{file}: the plan is over {MAX_PLAN_BYTES} bytes; refused")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{file}: the plan is not UTF-8 text (byte {exc.start})") from None
    return parse_plan_text(text, source=str(file), json_only=file.suffix.lower() == ".json")


def parse_plan_text(
    text: str, *, source: str = "<plan>", json_only: bool = False
) -> dict[str, Any]:
    """A plan document as data; a bare list of tasks becomes ``{"tasks": [...]}``."""
    if len(text.encode("utf-8")) > MAX_PLAN_BYTES:
        raise PlanError(f"{source}: the plan is over {MAX_PLAN_BYTES} bytes; refused")
    data = _load_json(text, source) if json_only else _load_yaml(text, source)
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict):
        raise PlanError(
            f"{source}: a plan is a mapping with 'tasks' (or a list of tasks), "
            f"not {type(data).__name__}"
        )
    return data


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise PlanError(f"{source}: the plan nests too deeply") from None


def _load_yaml(text: str, source: str) -> Any:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise PlanError(f"{source}: the plan nests too deeply") from None
    if root is None:
        raise PlanError(f"{source}: the plan is empty")
    try:
        _check_nodes(root, source)
        return yaml.SafeLoader("").construct_document(root)
    except RecursionError:
        raise PlanError(f"{source}: the plan nests too deeply") from None
    except yaml.YAMLError as exc:  # e.g. a bad timestamp or merge key
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise PlanError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse a document that expands to too many nodes, refers to itself, or repeats a key.

    The composed graph shares each anchored node among its aliases, so it is as
    small as the text; the size it would expand to is counted once per node.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise PlanError(
                f"{source}:{node.start_mark.line + 1}: an alias refers to a node that contains it"
            )
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        raise PlanError(
                            f"{source}:{k.start_mark.line + 1}: duplicate key {k.value!r}"
                        )
                    seen.add(k.value)
                children += (k, v)
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        if total > MAX_PLAN_NODES:
            raise PlanError(
                f"{source}: the plan expands to more than {MAX_PLAN_NODES} YAML nodes "
                "(aliases?); refused"
            )
        sizes[key] = total
        return total

    size(root)
