"""A model that replays a script: for tests and benchmarks.

Each call takes the next :class:`Reply` of the script (text and/or tool calls,
an optional delay, or an error to raise) and records the :class:`ChatRequest` it
got, so a test can assert exactly what an agent sent. A reply's text is streamed
to the request's ``on_text`` hook in small pieces, as a real server's would be.
When the script runs out the call fails with a :class:`UsageError` saying how
many replies there were -- unless ``cycle=True``, which replays the script from
the start (a worker replica answering many sub-tasks the same way, as the
orchestrator benchmark needs).

From a mesh file, ``provider: scripted`` reads the script from the JSON or YAML
file named by ``model``::

    {"delay": 0.5, "cycle": true,
     "replies": ["done", {"tool_calls": [{"name": "workspace.search",
                                          "arguments": {"query": "solar"}}]}]}
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import yaml

from microhive.errors import ConfigError, InvalidInput, UsageError
from microhive.models.base import ModelProvider
from microhive.models.types import (
    ChatRequest,
    ChatResult,
    FinishReason,
    ToolCall,
    Usage,
    count_tokens,
)

__all__ = ["Reply", "ReplyLike", "ScriptedModel"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer. ``error`` is raised instead of answering."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    delay: float | None = None
    finish_reason: FinishReason | None = None
    error: BaseException | None = None

    @classmethod
    def coerce(cls, item: ReplyLike) -> Reply:
        """Accept a Reply, a str (text), a ToolCall, an exception, a ChatResult or a dict."""
        if isinstance(item, Reply):
            return item
        if isinstance(item, str):
            return cls(text=item)
        if isinstance(item, ToolCall):
            return cls(tool_calls=(item,))
        if isinstance(item, BaseException):
            return cls(error=item)
        if isinstance(item, ChatResult):
            return cls(item.text, item.tool_calls, finish_reason=item.finish_reason)
        if isinstance(item, Mapping):
            unknown = set(item) - {"text", "tool_calls", "delay", "finish_reason"}
            if unknown:
                raise InvalidInput(f"scripted reply: unknown keys {sorted(unknown)}")
            calls = []
            for i, c in enumerate(item.get("tool_calls") or ()):
                if isinstance(c, ToolCall):
                    calls.append(c)
                else:
                    data = dict(c)
                    data.setdefault("id", f"call_{i}")
                    calls.append(ToolCall.from_dict(data))
            delay = item.get("delay")
            return cls(
                text=str(item.get("text") or ""),
                tool_calls=tuple(calls),
                delay=float(delay) if delay is not None else None,
                finish_reason=item.get("finish_reason"),
            )
        raise InvalidInput(f"scripted reply: cannot use a {type(item).__name__}")


ReplyLike = Reply | str | ToolCall | BaseException | ChatResult | Mapping[str, Any]


class ScriptedModel(ModelProvider):
    """Replays ``replies`` in order, one per call; records every request in ``requests``."""

    provider = "scripted"
    offline = True

    def __init__(
        self,
        replies: Iterable[ReplyLike],
        *,
        model: str = "scripted",
        delay: float = 0.0,
        cycle: bool = False,
    ) -> None:
        super().__init__(model)
        self.replies = [Reply.coerce(r) for r in replies]
        if cycle and not self.replies:
            raise InvalidInput("a cycling script needs at least one reply")
        self.delay = delay
        self.cycle = cycle
        self.requests: list[ChatRequest] = []
        self._next = itertools.count()

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedModel:
        """Load a script from a JSON or YAML file (see the module docstring)."""
        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read the model script: {exc}", file=str(file)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"the model script is not JSON or YAML: {exc}", file=str(file)
            ) from exc
        if isinstance(data, list):
            data = {"replies": data}
        if not isinstance(data, dict) or not isinstance(data.get("replies"), list):
            raise ConfigError("expected a list of replies or {replies: [...]}", file=str(file))
        try:
            return cls(
                data["replies"],
                model=str(data.get("model", file.stem)),
                delay=float(data.get("delay", 0.0)),
                cycle=bool(data.get("cycle", False)),
            )
        except InvalidInput as exc:
            raise ConfigError(exc.message, file=str(file)) from exc

    @property
    def calls(self) -> int:
        """How many calls were made so far."""
        return len(self.requests)

    async def _chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        index = next(self._next)
        if index >= len(self.replies) and not self.cycle:
            last = _last_user_text(request)
            raise UsageError(
                f"scripted model {self.model!r}: script exhausted: it has {len(self.replies)} "
                f"replies and this is call {index + 1} (last user message: {last!r})"
            )
        reply = self.replies[index % len(self.replies)]
        delay = reply.delay if reply.delay is not None else self.delay
        if delay > 0:
            await anyio.sleep(delay)
        if reply.error is not None:
            raise reply.error
        if reply.text and request.hooks is not None and request.hooks.on_text is not None:
            for piece in _pieces(reply.text):  # streamed, as a real server would
                await request.hooks.on_text(piece)
        calls = tuple(
            ToolCall(c.id or f"call_{index}_{i}", c.name, c.arguments, c.error)
            for i, c in enumerate(reply.tool_calls)
        )
        reason: FinishReason = reply.finish_reason or ("tool_calls" if calls else "stop")
        output = reply.text + "".join(json.dumps(dict(c.arguments)) for c in calls)
        return ChatResult(
            text=reply.text,
            tool_calls=calls,
            finish_reason=reason,
            usage=Usage(count_tokens(request.input_text()), count_tokens(output)),
            provider=self.provider,
            model=request.model,
            offline=True,
        )


def _pieces(text: str, size: int = 16) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _last_user_text(request: ChatRequest) -> str:
    texts: Sequence[str] = [m.content for m in request.messages if m.role == "user"]
    return texts[-1][:80] if texts else ""
