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


def _step(tid: str, *deps: int | str, save_to: str = "") -> dict[str, object]:
    return {
        "id": tid,
        "role": "writer",
        "instruction": f"do {tid}",
        "inputs": {"topic": "", "query": "", "read": [], "save_to": save_to},
        "depends_on": list(deps),
    }


def test_step_numbers_name_earlier_tasks() -> None:
    plan = parse_plan({"tasks": [_step("a"), _step("b", 1), _step("c", 1, 2, 2)]}, roles=ROLES)
    assert [(t.id, t.depends_on) for t in plan.tasks] == [
        ("a", ()),
        ("b", ("a",)),
        ("c", ("a", "b")),
    ]
    assert "only depend on earlier steps" in _refused([_step("a"), _step("b", 2)])
    assert "only depend on earlier steps" in _refused([_step("a", 0)])


def test_repeated_ids_are_made_unique_only_when_nothing_names_them() -> None:
    plan = parse_plan({"tasks": [_step("w"), _step("w", 1)]}, roles=ROLES)
    assert [(t.id, t.depends_on) for t in plan.tasks] == [("w", ()), ("w-2", ("w",))]
    assert "unique" in _refused([_step("w"), _step("w", "w")])


def test_task_count_drops_what_a_model_wrote_past_it() -> None:
    data = {"task_count": 2, "tasks": [_step("a"), _step("b", 1), _step("c", 2)]}
    assert [t.id for t in parse_plan(data, roles=ROLES).tasks] == ["a", "b"]


def test_empty_inputs_mean_none_and_save_to_is_the_declared_output() -> None:
    plan = parse_plan({"tasks": [_step("a", save_to="notes.md"), _step("b", 1)]}, roles=ROLES)
    assert plan.tasks[0].inputs == {"save_to": "notes.md"}
    assert plan.tasks[0].outputs == ("notes.md",)
    assert plan.tasks[1].inputs == {} and plan.tasks[1].outputs == ()
    for bad in ("../up.md", "/abs.md", "a b.md"):
        assert "must be a relative file path" in _refused([_step("a", save_to=bad)])


def test_every_plan_the_schema_allows_is_valid() -> None:
    """Hypothesis-style sweep: any instance of the structured schema parses."""
    import itertools

    import jsonschema

    from microhive.models.prompts import plan_schema

    schema = plan_schema(["writer", "researcher"], max_tasks=4)
    checker = jsonschema.Draft202012Validator(schema)
    for size in range(1, 5):
        for deps in itertools.product(*[range(step) for step in range(1, size + 1)]):
            tasks = [
                _step(f"t{i}", *([d] if d else []), save_to=f"f{i}.md")
                for i, d in enumerate(deps, start=1)
            ]
            data = {"task_count": size, "tasks": tasks}
            assert not list(checker.iter_errors(data))
            assert len(parse_plan(data, roles=ROLES).tasks) == size
    broken = {"task_count": 2, "tasks": [_step("a", 2), _step("b")]}
    assert list(checker.iter_errors(broken))  # a forward reference is outside the schema
