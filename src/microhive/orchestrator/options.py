"""What a run may ask for (``POST /runs`` options), and where its files go."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from microhive.errors import InvalidInput

__all__ = ["RunOptions", "project_folder"]


class RunOptions:
    """What ``POST /runs`` may set, checked: ``timeout``, ``budget_*``, ``models``."""

    def __init__(
        self,
        *,
        timeout: float | None = None,
        budget_steps: int | None = None,
        budget_tokens: int | None = None,
        models: Mapping[str, str] | None = None,
    ) -> None:
        if timeout is not None and not 0 < timeout <= 7 * 86400:
            raise InvalidInput(f"timeout must be between 0 and 604800 seconds, got {timeout}")
        for name, value in (("budget_steps", budget_steps), ("budget_tokens", budget_tokens)):
            if value is not None and value < 1:
                raise InvalidInput(f"{name} must be a positive whole number, got {value}")
        self.timeout = timeout
        self.budget_steps = budget_steps
        self.budget_tokens = budget_tokens
        self.models = dict(models or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunOptions:
        data = dict(data or {})
        unknown = set(data) - {"timeout", "budget_steps", "budget_tokens", "models"}
        if unknown:
            raise InvalidInput(f"unknown run options: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInput(f"bad run options: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "timeout": self.timeout,
            "budget_steps": self.budget_steps,
            "budget_tokens": self.budget_tokens,
            "models": self.models,
        }


def project_folder(goal: str, run_id: str) -> str:
    """``projects/<slug of the goal>-<run id prefix>``: readable and unique."""
    words = re.findall(r"[a-z0-9]+", goal.lower())
    stop = {"a", "an", "the", "and", "or", "of", "about", "on", "for", "to", "write", "brief"}
    slug = "-".join(w for w in words if w not in stop)[:40].strip("-") or "run"
    return f"projects/{slug}-{run_id[:8]}"
