"""What a run reports: its view for ``GET /runs/{id}`` and, once done, its result."""

from __future__ import annotations

from typing import Any

from microhive.context import CallContext
from microhive.orchestrator.options import project_folder
from microhive.orchestrator.store import RunRecord, TaskRecord

__all__ = ["run_result", "run_view"]


def run_view(run: RunRecord, tasks: list[TaskRecord]) -> dict[str, Any]:
    """The run, its plan and where each sub-task stands (results left out but the stop)."""
    return {
        "id": run.id,
        "goal": run.goal,
        "status": run.status.value,
        "error": run.error,
        "result": run.result,
        "plan": run.plan,
        "project": project_folder(run.goal, run.id),
        "trace_id": CallContext.from_headers(run.trace).trace_id,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "tasks": [
            {
                "id": t.id,
                "role": t.role,
                "status": t.status.value,
                "attempts": t.attempts,
                "depends_on": list(t.depends_on),
                "error": t.error,
                "stop": (t.result or {}).get("stop"),
            }
            for t in tasks
        ],
    }


def run_result(run: RunRecord, tasks: list[TaskRecord]) -> dict[str, Any]:
    """A finished run's result: the final sub-tasks' texts, the files written, where."""
    depended = {d for t in tasks for d in t.depends_on}
    finals = [t for t in tasks if t.id not in depended]
    files: list[str] = []
    for t in tasks:
        for call in (t.result or {}).get("tool_calls", []):
            path = (call.get("arguments") or {}).get("path")
            if path and not call.get("is_error") and "write" in str(call.get("name", "")):
                files.append(str(path))
        files.extend(str(p) for p in (t.result or {}).get("outputs") or ())
    return {
        "summary": "\n\n".join(str((t.result or {}).get("text", "")) for t in finals),
        "files": sorted(set(files)),
        "project": project_folder(run.goal, run.id),
        "offline": any((t.result or {}).get("offline") for t in tasks),
    }
