"""The model server's own metrics and its one log line per request.

On the service's registry, beside the request metrics every service has:
``microhive_model_requests_total`` (by ``stream`` and ``outcome``: ok, invalid,
error, cancelled), prompt and completion token counters, generation and
prompt-processing speed histograms (tokens/s), the slots, the slots busy, the
requests waiting for one, whether the model is loaded, and
``microhive_model_generations_stopped_total`` (streams stopped mid-generation
because their client went away).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from microhive.modelserver.engine import LlamaEngine
from microhive.modelserver.settings import ModelServerSettings
from microhive.service import Service

__all__ = ["ModelMetrics", "token_counts"]

log = logging.getLogger("microhive.modelserver")

_SPEED_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500)
_PROMPT_SPEED_BUCKETS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def token_counts(data: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens from an answer's ``usage``, else its llama.cpp ``timings``."""
    usage = data.get("usage") or {}
    timings = data.get("timings") or {}
    prompt = usage.get("prompt_tokens")
    if not isinstance(prompt, int):
        prompt = int(timings.get("prompt_n", 0) or 0) + int(timings.get("cache_n", 0) or 0)
    completion = usage.get("completion_tokens")
    if not isinstance(completion, int):
        completion = int(timings.get("predicted_n", 0) or 0)
    return prompt, completion


class ModelMetrics:
    """The model server's own metrics, on the service's registry."""

    def __init__(self, service: Service, engine: LlamaEngine, settings: ModelServerSettings):
        m = service.metrics
        self.alias = settings.alias
        self.requests = m.counter(
            "microhive_model_requests",
            "Chat completion requests, by stream (true/false) and outcome "
            "(ok, invalid, error, cancelled).",
            ("stream", "outcome"),
        )
        self.prompt_tokens = m.counter(
            "microhive_model_prompt_tokens", "Prompt tokens of answered requests (cached included)."
        )
        self.completion_tokens = m.counter(
            "microhive_model_completion_tokens", "Tokens generated for answered requests."
        )
        self.speed = m.histogram(
            "microhive_model_generation_tokens_per_second",
            "Generation speed of each answered request, in tokens per second.",
            buckets=_SPEED_BUCKETS,
        )
        self.prompt_speed = m.histogram(
            "microhive_model_prompt_tokens_per_second",
            "Prompt processing speed of each answered request, in tokens per second.",
            buckets=_PROMPT_SPEED_BUCKETS,
        )
        self.stopped = m.counter(
            "microhive_model_generations_stopped",
            "Streamed generations stopped before their end because the client went away.",
        )
        m.gauge("microhive_model_slots", "Requests the model can generate at once.").set(
            settings.slots
        )
        active = m.gauge("microhive_model_slots_busy", "Slots generating right now.")
        active.set_function(lambda: engine.active)
        waiting = m.gauge("microhive_model_requests_waiting", "Requests waiting for a free slot.")
        waiting.set_function(lambda: engine.waiting)
        loaded = m.gauge("microhive_model_loaded", "1 once the model is loaded, else 0.")
        loaded.set_function(lambda: 1 if engine.loaded else 0)

    def finish(self, stream: bool, outcome: str, data: dict[str, Any], began: float) -> None:
        """Count one finished request and log it."""
        self.requests.labels("true" if stream else "false", outcome).inc()
        prompt, completion = token_counts(data)
        timings = data.get("timings") or {}
        speed = timings.get("predicted_per_second")
        if outcome == "ok":
            self.prompt_tokens.inc(prompt)
            self.completion_tokens.inc(completion)
            if isinstance(speed, int | float) and completion > 1:
                self.speed.observe(speed)
            prompt_speed = timings.get("prompt_per_second")
            if isinstance(prompt_speed, int | float) and timings.get("prompt_n", 0) > 1:
                self.prompt_speed.observe(prompt_speed)
        finish_reason = data.get("finish_reason")
        for choice in data.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
        log.info(
            "chat completion %s",
            outcome,
            extra={
                "model": self.alias,
                "stream": stream,
                "outcome": outcome,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "tokens_per_second": round(speed, 1) if isinstance(speed, int | float) else None,
                "finish_reason": finish_reason,
                "duration_ms": round((time.monotonic() - began) * 1000, 1),
            },
        )
