"""The agent loop stops for a typed reason: answer, max steps, repeats, deadline, budget."""

from __future__ import annotations

import time

from microhive.agents import StopReason, run_agent
from microhive.agents.toolbox import LocalToolbox
from microhive.context import CallContext
from microhive.models.scripted import Reply, ScriptedModel
from microhive.models.types import SystemMessage, ToolCall, UserMessage

MESSAGES = [SystemMessage("You are a researcher."), UserMessage("How much is 2 + 3?")]


def _toolbox() -> LocalToolbox:
    box = LocalToolbox()

    def add(a: str, b: str) -> dict[str, int]:
        """Add two whole numbers."""
        return {"sum": int(a) + int(b)}

    def explode() -> str:
        """Always fails."""
        raise ValueError("the tool is broken")

    box.add(add)
    box.add(explode)
    return box


def _call(name: str, **args: object) -> Reply:
    return Reply(tool_calls=(ToolCall("", name, args),))


async def test_tool_then_final_answer() -> None:
    model = ScriptedModel([_call("add", a="2", b="3"), "The sum is 5."])
    box = _toolbox()
    result = await run_agent(model, MESSAGES, toolbox=box)
    assert result.stop is StopReason.FINAL_ANSWER
    assert result.ok
    assert result.text == "The sum is 5."
    assert result.steps == 2
    assert box.calls == [("add", {"a": "2", "b": "3"})]
    assert result.tool_calls[0].data == {"sum": 5}
    # The model saw the tool list and, on its second call, the tool's result.
    assert [t.name for t in model.requests[0].tools] == ["add", "explode"]
    assert '"sum": 5' in model.requests[1].messages[-1].content  # type: ignore[union-attr]
    assert result.usage.total_tokens > 0
    assert result.offline


async def test_tool_error_goes_back_to_the_model() -> None:
    model = ScriptedModel([_call("explode"), "I could not compute it."])
    result = await run_agent(model, MESSAGES, toolbox=_toolbox())
    assert result.stop is StopReason.FINAL_ANSWER
    assert result.tool_calls[0].is_error
    last = model.requests[1].messages[-1]
    assert "the tool is broken" in last.content
    assert last.is_error  # type: ignore[union-attr]


async def test_max_steps() -> None:
    model = ScriptedModel([_call("add", a=str(i), b="1") for i in range(10)], model="looper")
    result = await run_agent(model, MESSAGES, toolbox=_toolbox(), max_steps=3)
    assert result.stop is StopReason.MAX_STEPS
    assert result.steps == 3
    assert "after 3 model calls" in result.detail
    assert len(result.tool_calls) == 3


async def test_repeated_identical_call_stops() -> None:
    model = ScriptedModel([_call("add", a="1", b="1")], cycle=True)
    result = await run_agent(model, MESSAGES, toolbox=_toolbox(), max_steps=10, repeat_limit=2)
    assert result.stop is StopReason.REPEATED_CALL
    assert "3 times" in result.detail
    assert len(result.tool_calls) == 2


async def test_passed_deadline_stops_before_calling_the_model() -> None:
    model = ScriptedModel(["never"])
    ctx = CallContext.new(deadline=time.time() - 1)
    result = await run_agent(model, MESSAGES, context=ctx)
    assert result.stop is StopReason.DEADLINE
    assert model.calls == 0


async def test_deadline_during_a_slow_model_call() -> None:
    model = ScriptedModel([Reply("late", delay=5.0)])
    result = await run_agent(model, MESSAGES, context=CallContext.new(timeout=0.2))
    assert result.stop is StopReason.DEADLINE


async def test_step_budget() -> None:
    model = ScriptedModel([_call("add", a="1", b=str(i)) for i in range(5)])
    ctx = CallContext.new(budget_steps=2)
    result = await run_agent(model, MESSAGES, toolbox=_toolbox(), context=ctx, max_steps=10)
    assert result.stop is StopReason.BUDGET
    assert result.steps == 2


async def test_token_budget() -> None:
    model = ScriptedModel([_call("add", a="1", b="2"), "done"])
    ctx = CallContext.new(budget_tokens=5)
    result = await run_agent(model, MESSAGES, toolbox=_toolbox(), context=ctx)
    assert result.stop is StopReason.BUDGET
    assert "token budget" in result.detail


async def test_hop_limit() -> None:
    ctx = CallContext.new(max_hops=1).next_hop()
    result = await run_agent(ScriptedModel(["x"]), MESSAGES, context=ctx)
    assert result.stop is StopReason.HOP_LIMIT


async def test_top_k_uses_the_selector() -> None:
    model = ScriptedModel(["ok"])
    picked: list[str] = []

    async def select(task: str, tools: object, k: int) -> list:  # type: ignore[type-arg]
        picked.append(task)
        return [t for t in tools if t.name == "explode"][:k]  # type: ignore[attr-defined]

    await run_agent(
        model, MESSAGES, toolbox=_toolbox(), top_k=1, select_tools=select, task_text="boom"
    )
    assert picked == ["boom"]
    assert [t.name for t in model.requests[0].tools] == ["explode"]


def test_result_serialises() -> None:
    from microhive.agents import AgentResult

    data = AgentResult(text="x", stop=StopReason.MAX_STEPS).to_dict()
    assert data["stop"] == "max_steps"
