"""What the orchestrator and the workers say to each other on the bus.

=========================  ==================================================  =============
subject                    payload                                             who publishes
=========================  ==================================================  =============
``tasks.<role>``           :class:`TaskMessage`                                orchestrator
``runs.<run>.started``     :class:`TaskEvent` (``started``)                    worker
``runs.<run>.progress``    :class:`TaskEvent` (``tool``, ``file``, ``output``  worker
                           -- the model's streamed text -- or ``retry``)
``runs.<run>.result``      :class:`TaskEvent` (``result``)                     worker
=========================  ==================================================  =============

Workers take ``tasks.<role>`` as the queue group ``worker-<role>``, so replicas
share the load; the orchestrator takes ``runs.>`` as the queue group
``orchestrator``. Every message id is derived from run, task and attempt, so a
repeated publish (a retry, a resumed orchestrator) is stored once.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from microhive.errors import InvalidInput

__all__ = [
    "ORCHESTRATOR_GROUP",
    "RUN_EVENTS",
    "TaskEvent",
    "TaskMessage",
    "parse_message",
    "result_msg_id",
    "run_subject",
    "task_msg_id",
    "task_subject",
    "worker_group",
]

ORCHESTRATOR_GROUP = "orchestrator"
RUN_EVENTS = "runs.*.*"
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def task_subject(role: str) -> str:
    return f"tasks.{role}"


def worker_group(role: str) -> str:
    return f"worker-{role}"


def run_subject(run_id: str, kind: str) -> str:
    if not _SAFE.match(run_id):
        raise InvalidInput(f"run id {run_id!r} is not a valid subject token")
    return f"runs.{run_id}.{kind}"


def task_msg_id(run_id: str, task_id: str, attempt: int) -> str:
    return f"task:{run_id}:{task_id}:{attempt}"


def result_msg_id(run_id: str, task_id: str, attempt: int, kind: str) -> str:
    return f"{kind}:{run_id}:{task_id}:{attempt}"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskMessage(_Message):
    """One sub-task handed to a worker."""

    run_id: str = Field(min_length=1, max_length=64)
    task_id: str = Field(min_length=1, max_length=64)
    role: str = Field(min_length=1, max_length=63)
    attempt: int = Field(ge=1)
    goal: str
    instruction: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    project: str = ""
    #: Results of the tasks this one depends on, by task id.
    documents: dict[str, str] = Field(default_factory=dict)
    model: str | None = None
    #: Files (relative to ``project``) the sub-task must produce: its declared outputs.
    outputs: list[str] = Field(default_factory=list, max_length=16)
    #: The declared outputs of the sub-tasks it depends on (relative to ``project``).
    dependency_outputs: list[str] = Field(default_factory=list, max_length=64)


class TaskEvent(_Message):
    """Something a worker reports about a sub-task."""

    type: Literal["started", "tool", "file", "output", "retry", "result"]
    run_id: str
    task_id: str
    attempt: int = Field(ge=1)
    worker: str = ""
    ok: bool = True
    #: For ``result``: the agent's result (text, stop reason, usage, tool calls).
    result: dict[str, Any] | None = None
    error: str | None = None
    #: For a failed ``result``: False when trying again cannot help (a configuration
    #: error such as a missing key), so the orchestrator fails the sub-task at once.
    retryable: bool = True
    #: For ``tool``/``file``: what happened (tool name, path, ...); for ``output``: the
    #: model's streamed text (``text``); for ``retry``: the model call's retry.
    detail: dict[str, Any] = Field(default_factory=dict)


M = TypeVar("M", bound=_Message)


def parse_message(cls: type[M], data: Any) -> M:
    """Validate a bus payload; InvalidInput (which dead-letters) names the problem."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise InvalidInput(f"malformed {cls.__name__}: {where}: {first['msg']}") from None
