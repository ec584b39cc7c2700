"""Worker agents (micro-agents): the agent loop and the worker service around it."""

from microhive.agents.loop import (
    AgentResult,
    StopReason,
    Toolbox,
    ToolOutcome,
    ToolRecord,
    run_agent,
)

__all__ = ["AgentResult", "StopReason", "ToolOutcome", "ToolRecord", "Toolbox", "run_agent"]
