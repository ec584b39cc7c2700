"""The orchestrator: goals to plans, plans to dispatched sub-tasks, durable run state."""

from microhive.orchestrator.store import (
    RunEvent,
    RunRecord,
    RunStatus,
    TaskRecord,
    TaskStatus,
    Transition,
    WorkflowStore,
    open_store,
)

__all__ = [
    "RunEvent",
    "RunRecord",
    "RunStatus",
    "TaskRecord",
    "TaskStatus",
    "Transition",
    "WorkflowStore",
    "open_store",
]
