"""A stand-in for ``xllamacpp.Server``, paced by events the test sets (no clocks)."""

from __future__ import annotations

import threading
from typing import Any


def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text else {}
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class FakeLlama:
    """Answers with ``tokens`` chunks; pauses after ``pause_after`` until ``resume`` is set.

    ``release`` holds every call at its start until set; ``fail_at_end`` ends a
    stream with an error chunk instead of the last one. Like llama.cpp without
    ``include_usage``, the last chunk carries ``timings`` but no ``usage``.
    """

    def __init__(
        self, tokens: int = 5, pause_after: int | None = None, fail_at_end: bool = False
    ) -> None:
        self.tokens = tokens
        self.fail_at_end = fail_at_end
        self.pause_after = pause_after
        self.resume = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.calls: list[dict[str, Any]] = []
        self.stopped_at: int | None = None
        self.finished: list[int] = []

    def handle_chat_completions(self, body: dict[str, Any], callback: Any = None) -> Any:
        self.calls.append(body)
        self.entered.set()
        assert self.release.wait(10)
        if "error" in body:
            if callback is not None:
                callback({"error": body["error"]})
                return None
            return {"error": body["error"]}
        if "raise" in body:
            raise body["raise"]
        if callback is None:
            self.finished.append(len(self.calls))
            return {"choices": [{"message": {"content": "ok"}}], "usage": {"completion_tokens": 1}}
        for i in range(self.tokens):
            if i == self.pause_after:
                assert self.resume.wait(10)
            if callback(chunk(f"t{i}")):
                self.stopped_at = i
                return None
        if self.fail_at_end:
            callback({"error": {"code": 500, "message": "out of memory"}})
            return None
        last = chunk("", "stop")
        last["timings"] = {"prompt_n": 7, "cache_n": 3, "predicted_n": self.tokens}
        last["timings"]["predicted_per_second"] = 25.0
        callback(last)
        return None
