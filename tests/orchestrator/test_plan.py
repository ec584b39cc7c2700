"""Plans are validated: acyclic, known roles, sane size; refusals say why."""

from __future__ import annotations

import json

import pytest

from microhive.orchestrator.plan import PlanError, parse_plan, ready_tasks

ROLES = {"planner", "researcher", "summarizer", "writer"}

SEED = {
    "tasks": [
        {"id": "outline", "role": "planner", "instruction": "outline the brief"},
        {
            "id": "research-1",
            "role": "researcher",
            "instruction": "find sources",
            "depends_on": ["outline"],
        },
        {
            "id": "summarize",
            "role": "summarizer",
            "instruction": "summarise",
            "depends_on": ["outline"],
        },
        {
            "id": "write",
            "role": "writer",
            "instruction": "write",
            "depends_on": ["research-1", "summarize"],
        },
    ]
}


def test_seed_plan_is_accepted_and_ordered() -> None:
    plan = parse_plan(SEED, roles=ROLES)
    order = plan.topological_order()
    assert order[0] == "outline"
    assert order[-1] == "write"


def test_ready_tasks_follow_dependencies() -> None:
    plan = parse_plan(SEED, roles=ROLES)
    assert [t.id for t in ready_tasks(plan, [], [])] == ["outline"]
    assert {t.id for t in ready_tasks(plan, ["outline"], [])} == {"research-1", "summarize"}
    assert [t.id for t in ready_tasks(plan, ["outline"], ["research-1"])] == ["summarize"]
    assert [t.id for t in ready_tasks(plan, ["outline", "research-1", "summarize"], [])] == [
        "write"
    ]


def test_json_inside_prose_or_a_fence_is_read() -> None:
    text = "Here is the plan:\n```json\n" + json.dumps(SEED) + "\n```\nGood luck."
    assert len(parse_plan(text, roles=ROLES).tasks) == 4
    assert len(parse_plan("Plan: " + json.dumps(SEED["tasks"]), roles=ROLES).tasks) == 4


def _refused(plan: object, **kwargs: object) -> str:
    with pytest.raises(PlanError) as info:
        parse_plan(plan, roles=ROLES, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_cycle_is_refused_with_the_cycle() -> None:
    tasks = [
        {"id": "a", "role": "writer", "instruction": "x", "depends_on": ["b"]},
        {"id": "b", "role": "writer", "instruction": "x", "depends_on": ["a"]},
    ]
    assert "cycle: a -> b -> a" in _refused(tasks)


def test_unknown_role_is_refused_naming_known_ones() -> None:
    message = _refused([{"id": "a", "role": "poet", "instruction": "x"}])
    assert "unknown role 'poet'" in message
    assert "researcher" in message


def test_other_refusals() -> None:
    assert "not valid JSON" in _refused("{tasks: nope")
    assert "no tasks" in _refused({"tasks": []})
    assert "unique" in _refused([{"id": "a", "role": "writer", "instruction": "x"}] * 2)
    assert "not in the plan" in _refused(
        [{"id": "a", "role": "writer", "instruction": "x", "depends_on": ["z"]}]
    )
    assert "depends on itself" in _refused(
        [{"id": "a", "role": "writer", "instruction": "x", "depends_on": ["a"]}]
    )
    assert "malformed" in _refused([{"id": "a", "role": "writer", "instruction": "x", "extra": 1}])
    many = [{"id": f"t{i}", "role": "writer", "instruction": "x"} for i in range(5)]
    assert "at most 4" in _refused(many, max_tasks=4)


def test_context_beside_the_tasks_is_ignored() -> None:
    plan = parse_plan({**SEED, "goal": "a brief", "offline": True}, roles=ROLES)
    assert len(plan.tasks) == 4
