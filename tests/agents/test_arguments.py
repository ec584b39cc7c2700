"""A call that cannot run never reaches the tool; the model is told what was wrong, in words."""

from __future__ import annotations

import json
from typing import Any

import pytest

from microhive.agents import StopReason, run_agent
from microhive.agents.arguments import check_call
from microhive.agents.toolbox import LocalToolbox
from microhive.models.scripted import Reply, ScriptedModel
from microhive.models.types import SystemMessage, ToolCall, ToolResultMessage, ToolSpec, UserMessage

COUNT = ToolSpec(
    "zoo.count",
    "Count the animals of a species.",
    {
        "type": "object",
        "properties": {
            "species": {"type": "string"},
            "n": {"type": "integer"},
            "unit": {"enum": ["head", "pair"]},
            "where": {"type": "string", "pattern": "^(a+)+$"},
        },
        "required": ["species"],
        "additionalProperties": False,
    },
)
MESSAGES = [SystemMessage("role: keeper"), UserMessage("How many owls are there?")]


def _box() -> LocalToolbox:
    def count(**arguments: Any) -> dict[str, Any]:
        return {"counted": arguments}

    return LocalToolbox({"zoo.count": (COUNT, count)})


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ({}, "missing required field 'species'"),
        ({"species": "owl", "n": "five"}, "field 'n' must be a whole number, not the string"),
        ({"species": "owl", "legs": 2}, "unknown field 'legs' (fields: n, species, unit, where)"),
        ({"species": "owl", "unit": "dozen"}, 'field \'unit\' must be one of "head", "pair"'),
        ({"species": 7}, "field 'species' must be a string, not the number 7"),
    ],
)
def test_schema_problems_in_plain_words(arguments: dict[str, Any], said: str) -> None:
    problem = check_call(ToolCall("1", "zoo.count", arguments), [COUNT])
    assert problem is not None and said in problem


def test_json_problems_and_unknown_tools_in_plain_words() -> None:
    broken = ToolCall.from_dict({"id": "1", "name": "zoo.count", "arguments": '{"species" "owl"}'})
    assert check_call(broken, [COUNT]) == (
        "arguments are not valid JSON at column 12: Expecting ':' delimiter"
    )
    unknown = check_call(ToolCall("1", "zoo.feed", {}), [COUNT])
    assert unknown == "there is no tool named 'zoo.feed'; the tools you can call are: zoo.count"


def test_a_schema_regex_is_not_run_on_the_agents_loop() -> None:
    # A catastrophic pattern from a tool's schema would take minutes on this input.
    call = ToolCall("1", "zoo.count", {"species": "owl", "where": "a" * 40 + "!"})
    assert check_call(call, [COUNT]) is None  # the tool checks its own patterns


async def test_bad_arguments_never_reach_the_tool_and_the_model_fixes_them() -> None:
    box = _box()
    model = ScriptedModel(
        [
            {"tool_calls": [{"name": "zoo.count", "arguments": '{"species": "owl",}'}]},
            {"tool_calls": [{"name": "zoo.count", "arguments": {"kind": "owl"}}]},
            {"tool_calls": [{"name": "zoo.count", "arguments": {"species": "owl"}}]},
            "There are owls.",
        ]
    )
    result = await run_agent(model, MESSAGES, toolbox=box, max_steps=6)
    assert result.stop is StopReason.FINAL_ANSWER
    assert box.calls == [("zoo.count", {"species": "owl"})]  # only the good call ran
    assert [r.rejected for r in result.tool_calls] == [True, True, False]
    told = [m for m in model.requests[1].messages if isinstance(m, ToolResultMessage)]
    assert told[-1].is_error
    assert "was not run: arguments are not valid JSON at column 19" in told[-1].content
    told = [m for m in model.requests[2].messages if isinstance(m, ToolResultMessage)]
    assert "missing required field 'species'" in told[-1].content
    assert "unknown field 'kind'" in told[-1].content


async def test_an_unknown_tool_is_refused_and_a_stubborn_model_stops() -> None:
    box = _box()
    model = ScriptedModel([Reply(tool_calls=(ToolCall("", "zoo.feed", {}),))], cycle=True)
    result = await run_agent(model, MESSAGES, toolbox=box, max_steps=8, repeat_limit=2)
    assert result.stop is StopReason.REPEATED_CALL
    assert box.calls == []
    assert all(r.rejected for r in result.tool_calls)
    assert "there is no tool named 'zoo.feed'" in result.tool_calls[0].text


async def test_nulls_for_optional_arguments_mean_not_given() -> None:
    box = _box()
    model = ScriptedModel(
        [
            {"tool_calls": [{"name": "zoo.count", "arguments": {"species": "owl", "n": None}}]},
            "done",
        ]
    )
    result = await run_agent(model, MESSAGES, toolbox=box)
    assert box.calls == [("zoo.count", {"species": "owl"})]
    assert not result.tool_calls[0].rejected


async def test_the_worker_owns_the_idempotency_key() -> None:
    from microhive.agents.worker import KeyedToolbox
    from microhive.context import CallContext

    seen: list[dict[str, Any]] = []
    spec = ToolSpec(
        "ws.write",
        "Write.",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "idempotency_key": {"type": "string"}},
            "required": ["path"],
        },
    )

    def write(**arguments: Any) -> str:
        seen.append(arguments)
        return "ok"

    keyed = KeyedToolbox(LocalToolbox({"ws.write": (spec, write)}), "run1:task1")
    [shown] = await keyed.list_tools()
    assert "idempotency_key" not in shown.parameters["properties"]  # not the model's to fill
    await keyed.call_tool("ws.write", {"path": "a", "idempotency_key": None}, context=CallContext())
    await keyed.call_tool("ws.write", {"path": "b"}, context=CallContext())
    assert [s["idempotency_key"] for s in seen] == ["run1:task1:1", "run1:task1:2"]


async def test_an_object_given_for_a_string_is_sent_as_its_json_text() -> None:
    seen: list[dict[str, Any]] = []
    spec = ToolSpec(
        "ws.write",
        "Write.",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    )

    def write(**arguments: Any) -> str:
        seen.append(arguments)
        return "ok"

    facts = {"facts": [{"fact": "bees like lavender", "source": "notes.md"}]}
    model = ScriptedModel(
        [
            {
                "tool_calls": [
                    {"name": "ws.write", "arguments": {"path": "f.json", "content": facts}}
                ]
            },
            "saved",
        ]
    )
    result = await run_agent(model, MESSAGES, toolbox=LocalToolbox({"ws.write": (spec, write)}))
    assert not result.tool_calls[0].rejected
    assert json.loads(seen[0]["content"]) == facts
