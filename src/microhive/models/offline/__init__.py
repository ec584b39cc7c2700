"""The offline model: no key, no network, deterministic, and labelled as such.

It is not a language model. It reads the conversation's conventions
(:mod:`microhive.models.prompts`) and does real work on real documents:

* **planner** -- a system message with ``role: planner`` or an ``Available
  roles:`` list gets a plan as JSON (:func:`~.planner.make_plan`);
* **tool-using agent** -- with tools on offer it searches, extracts, reads and
  saves by deterministic rules (:mod:`.agent`), then answers;
* **summariser / writer** -- without tools it composes an extractive Markdown
  brief with citations from the documents in the conversation (:mod:`.brief`).

Every result has ``offline=True``; text it writes carries ``_(offline model)_``
and plans carry ``"offline": true``. Usage is estimated with
:func:`~microhive.models.types.count_tokens`.
"""

from __future__ import annotations

import json

import anyio

from microhive.models.base import ModelProvider
from microhive.models.offline.agent import Action, next_action
from microhive.models.offline.brief import OFFLINE_NOTE
from microhive.models.offline.planner import make_plan, split_goal
from microhive.models.prompts import ROLES_HEADER, parse_roles, role_of
from microhive.models.types import (
    ChatRequest,
    ChatResult,
    SystemMessage,
    ToolCall,
    Usage,
    UserMessage,
    count_tokens,
)

__all__ = ["DEFAULT_ROLES", "OFFLINE_NOTE", "OfflineModel", "make_plan", "split_goal"]

#: Roles assumed when a planning prompt lists none.
DEFAULT_ROLES = {
    "researcher": "searches the workspace, extracts PDFs and saves findings",
    "summarizer": "merges findings into the most important facts",
    "writer": "writes the report from the findings",
}


def _respond(request: ChatRequest) -> Action:
    system = "\n".join(m.content for m in request.messages if isinstance(m, SystemMessage))
    if ROLES_HEADER in system or role_of(system) == "planner":
        # The goal is the "Goal:" message (a re-ask after a refused plan comes later).
        users = [m.content.strip() for m in request.messages if isinstance(m, UserMessage)]
        goal = next((u for u in users if u.lower().startswith("goal:")), users[0] if users else "")
        if goal.lower().startswith("goal:"):
            goal = goal[5:].strip()
        plan = make_plan(goal, parse_roles(system) or DEFAULT_ROLES)
        return Action(text=json.dumps(plan, indent=2, ensure_ascii=False))
    return next_action(request)


class OfflineModel(ModelProvider):
    """The deterministic offline planner, agent and extractive writer."""

    provider = "offline"
    offline = True

    def __init__(self, model: str = "offline") -> None:
        super().__init__(model)

    async def _chat(self, request: ChatRequest) -> ChatResult:
        action = await anyio.to_thread.run_sync(_respond, request)
        calls: tuple[ToolCall, ...] = tuple(action.tool_calls)
        output = action.text + "".join(json.dumps(dict(c.arguments)) for c in calls)
        return ChatResult(
            text=action.text,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            usage=Usage(count_tokens(request.input_text()), count_tokens(output)),
            provider=self.provider,
            model=request.model,
            offline=True,
        )
