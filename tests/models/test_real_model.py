"""The mesh against a real model: llama.cpp's server with a small instruct model.

One ``model-server`` process serves the whole session (the ``real_model_server``
fixture: the packaged Qwen2.5-Coder 0.5B, CPU). Prompts and ``max_tokens`` are
small and the temperature is 0, so each call takes seconds. Every test checks
what was produced -- a plan that validates, a tool that ran with the right
arguments, a run that did not succeed -- never only what the model said.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from microhive.agents import AgentResult, run_agent
from microhive.agents.gateway_toolbox import GatewayToolbox
from microhive.agents.outputs import WorkspaceOutputs
from microhive.agents.worker import Worker
from microhive.bus import open_bus
from microhive.mcp.registry import UpstreamSpec
from microhive.mcp.server import ToolService
from microhive.models import (
    ChatRequest,
    ChatResult,
    ModelProvider,
    ResponseSchema,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    UserMessage,
    planning_messages,
    task_messages,
)
from microhive.models.openai_compat import OpenAIModel
from microhive.models.prompts import plan_schema
from microhive.orchestrator import RunStatus, open_store
from microhive.orchestrator.engine import Orchestrator, RunOptions
from microhive.orchestrator.plan import parse_plan
from microhive.service import Service
from microhive.workspace.service import build_service
from tests.conftest import RealModelServer
from tests.mcp_gateway.harness import gateway, serving
from tests.workspace.wshelp import Server, settings

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

ROLES = {
    "researcher": "searches the workspace and saves the facts it finds as JSON",
    "writer": "writes the Markdown brief from the research",
}


def _model(server: RealModelServer, **kwargs: Any) -> OpenAIModel:
    kwargs.setdefault("max_tokens", 128)
    return OpenAIModel(
        server.model,
        api_key=server.api_key or "no-key",
        base_url=server.base_url,
        temperature=0,
        timeout=300,
        retries=1,
        **kwargs,
    )


class Calculator:
    """A real MCP tool service that remembers every call that reached it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, float]] = []
        self.service = ToolService("calculator")

        @self.service.tool(read_only=True, idempotent=True)
        def add(a: float, b: float) -> float:
            """Add two numbers.

            Args:
                a: the first number
                b: the second number
            """
            self.calls.append({"a": a, "b": b})
            return a + b


@asynccontextmanager
async def calculator_gateway() -> AsyncIterator[tuple[Calculator, str]]:
    """A real gateway in front of the calculator (entered in the test's own task)."""
    calc = Calculator()
    async with (
        serving(calc.service.asgi_app()) as calc_base,
        gateway([UpstreamSpec("calculator", f"{calc_base}/mcp")]) as (_, base),
    ):
        yield calc, f"{base}/mcp"


async def test_a_plan_from_the_real_model_validates(real_model_server: RealModelServer) -> None:
    roles = list(ROLES)
    schema = ResponseSchema("plan", plan_schema(roles), loose=plan_schema(roles, loose=True))
    async with _model(real_model_server, max_tokens=700) as model:
        result = await model.chat(
            planning_messages("a brief about bees in cities", ROLES), response_schema=schema
        )
    plan = parse_plan(result.text, roles=ROLES)  # raises PlanError when invalid
    assert 1 <= len(plan.tasks) <= 8
    assert {t.role for t in plan.tasks} <= set(ROLES)
    assert result.finish_reason == "stop"


async def test_the_real_model_writes_its_tool_call_as_text_and_it_is_recovered(
    real_model_server: RealModelServer,
) -> None:
    """What the issue saw: no ``tool_calls`` on the wire, the call in the content."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "calculator__add",
                "description": "Add two numbers.",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                },
            },
        }
    ]
    ask = [
        {"role": "system", "content": "You are a helpful agent. Use the tools."},
        {"role": "user", "content": "What is 1234 + 4321? Use the tool."},
    ]
    async with openai.AsyncOpenAI(
        base_url=real_model_server.base_url, api_key=real_model_server.api_key or "x"
    ) as raw:
        answer = await raw.chat.completions.create(
            model=real_model_server.model, messages=ask, tools=tools, max_tokens=64, temperature=0
        )  # type: ignore[call-overload]
    message = answer.choices[0].message
    assert not message.tool_calls  # llama.cpp left the call in the text...
    assert "calculator__add" in (message.content or "")
    from microhive.models import ToolSpec

    spec = ToolSpec.from_dict(tools[0]["function"])  # type: ignore[arg-type]
    async with _model(real_model_server, max_tokens=64) as model:
        result = await model.chat(
            [SystemMessage(ask[0]["content"]), UserMessage(ask[1]["content"])], tools=[spec]
        )
    # ...and the provider recovered it into a real call.
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [
        ("calculator__add", {"a": 1234, "b": 4321})
    ]
    assert result.finish_reason == "tool_calls"


ADD_TASK = task_messages(
    "researcher", "What is 1234 + 4321? Use the calculator tool, then answer with the sum."
)


async def _add_with_calculator(
    server: RealModelServer, wrap: Any = None
) -> tuple[AgentResult, Calculator, ModelProvider]:
    """The add task, by the real model (``wrap`` may stand between), through the gateway."""
    async with (
        calculator_gateway() as (calc, url),
        GatewayToolbox(url) as toolbox,
        _model(server) as real,
    ):
        model = wrap(real) if wrap is not None else real
        result = await run_agent(model, ADD_TASK, toolbox=toolbox, max_steps=4)
    return result, calc, model


async def test_a_real_agent_calls_a_real_tool_through_the_gateway(
    real_model_server: RealModelServer,
) -> None:
    result, calc, _ = await _add_with_calculator(real_model_server)
    # The tool itself saw the call: it ran, with the right arguments.
    assert {"a": 1234, "b": 4321} in calc.calls
    # (the gateway serves it as calculator_add)
    ran = [r for r in result.tool_calls if r.name == "calculator_add" and not r.rejected]
    assert ran and not ran[0].is_error and "5555" in ran[0].text


class _Damaged(ModelProvider):
    """The real model, with its first tool call's arguments broken on the way back.

    Makes "the model wrote bad arguments" happen on demand; everything after it --
    the loop's answer to the model, the model's next turn -- is real.
    """

    provider = "openai"

    def __init__(self, real: OpenAIModel) -> None:
        super().__init__(real.model)
        self.real = real
        self.requests: list[ChatRequest] = []
        self.damaged = False

    async def _chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        result = await self.real.chat(
            list(request.messages), tools=list(request.tools), max_tokens=request.max_tokens
        )
        if result.tool_calls and not self.damaged:
            self.damaged = True
            first = result.tool_calls[0]
            text = json.dumps(dict(first.arguments))[:-1] + ","  # cut, with a stray comma
            broken = ToolCall.from_dict({"id": first.id, "name": first.name, "arguments": text})
            return ChatResult(
                result.text, (broken, *result.tool_calls[1:]), "tool_calls", result.usage
            )
        return result


async def test_malformed_arguments_are_told_to_the_model_and_never_reach_the_tool(
    real_model_server: RealModelServer,
) -> None:
    result, calc, damaged = await _add_with_calculator(real_model_server, _Damaged)
    assert isinstance(damaged, _Damaged)
    model = damaged
    assert model.damaged
    assert result.tool_calls[0].rejected  # the broken call was refused...
    # ...no call without both numbers ever reached the tool...
    assert all(set(c) == {"a", "b"} for c in calc.calls)
    # ...and the model's next turn was told what was wrong, in words.
    told = [m for m in model.requests[1].messages if isinstance(m, ToolResultMessage)]
    assert told and told[0].is_error
    assert "was not run: arguments are not valid JSON at column" in told[0].content


async def test_a_sub_task_that_writes_nothing_fails_and_its_run_does_not_succeed(
    real_model_server: RealModelServer, tmp_path: Path
) -> None:
    """The real model answers in words; the file it was to save is not there."""
    ws = build_service(Service(name="workspace"), settings(tmp_path / "ws"))
    server = await Server(ws.asgi()).start()
    check = WorkspaceOutputs(server.url)
    plan = {
        "tasks": [
            {
                "id": "notes",
                "role": "researcher",
                "instruction": "Write two sentences about bees.",
                "inputs": {"save_to": "notes.md"},
            }
        ]
    }
    try:
        async with (
            open_bus("memory://") as bus,
            open_store(f"sqlite:///{tmp_path}/wf.db") as store,
            _model(real_model_server, max_tokens=48) as model,
        ):
            orch = Orchestrator(store=store, bus=bus, planner=model, roles=ROLES, max_attempts=1)
            await orch.start()
            # The worker has no tools: whatever the model says, nothing can be saved.
            worker = Worker(
                bus=bus, role="researcher", model_for=lambda _: model, check_outputs=check
            )
            await worker.start()
            try:
                run = await orch.submit("notes about bees", RunOptions(timeout=240), plan=plan)
                done = await orch.wait(run.id, within=240)
            finally:
                await worker.aclose()
                await orch.aclose()
            assert done.status is RunStatus.FAILED
            assert "declared output not written" in (done.error or "")
            assert "notes.md" in (done.error or "")
            types = [e.type for e in await store.events(run.id)]
            assert "run.succeeded" not in types and "task.failed" in types
    finally:
        await check.aclose()
        await server.stop()
