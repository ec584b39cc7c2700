"""Rank tools for a task: keywords (BM25) and embeddings, fused by reciprocal rank.

A model that is shown every tool of a large mesh wastes its context and picks
worse; :class:`ToolRetriever` returns the ``k`` tools that fit a task text.

* **keyword** -- BM25 over the tool name, its description and its argument
  names and descriptions (``keyword.py``);
* **embedding** -- cosine similarity between the task and each tool's text, with
  any :class:`~microhive.embeddings.Embedder` (the bundled all-MiniLM-L6-v2 by
  default; nothing is downloaded at run time);
* **fused** -- reciprocal rank fusion, ``score = sum(1 / (60 + rank))`` over the
  two rankings, which needs no score calibration between them.

Without an embedder the retriever is keyword-only. Retrieval is always limited
to the tools a caller may see (``allowed``), so it can never reveal a tool that
a role's allowlist hides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .keyword import BM25Index, tokenize

__all__ = [
    "CachingEmbedder",
    "Hit",
    "Mode",
    "ToolDoc",
    "ToolRetriever",
    "reciprocal_rank_fusion",
]

Mode = Literal["keyword", "embedding", "fused"]
RRF_K = 60


class _Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> Any: ...


@dataclass(frozen=True)
class ToolDoc:
    """What retrieval knows of one tool: its qualified name, description and schema."""

    qualified: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_definition(cls, qualified: str, definition: dict[str, Any]) -> ToolDoc:
        schema = definition.get("inputSchema") or definition.get("input_schema") or {}
        return cls(qualified, definition.get("description") or "", dict(schema))

    def arguments(self) -> list[tuple[str, str]]:
        props = self.input_schema.get("properties") or {}
        if not isinstance(props, dict):
            return []
        return [
            (str(name), str(spec.get("description", "")) if isinstance(spec, dict) else "")
            for name, spec in props.items()
        ]

    def keyword_tokens(self) -> list[str]:
        name_tokens = tokenize(self.qualified.replace(".", " "))
        arg_names = [t for name, _ in self.arguments() for t in tokenize(name)]
        arg_text = [t for _, text in self.arguments() for t in tokenize(text)]
        return name_tokens * 2 + tokenize(self.description) + arg_names + arg_text

    def embedding_text(self) -> str:
        name = self.qualified.replace(".", " ").replace("_", " ")
        args = ", ".join(name for name, _ in self.arguments())
        return f"{name}: {self.description}" + (f" (arguments: {args})" if args else "")

    def prompt_size(self) -> int:
        """Characters this tool costs in a prompt (name, description, schema as JSON)."""
        import json

        return len(self.qualified) + len(self.description) + len(json.dumps(self.input_schema))


@dataclass(frozen=True)
class Hit:
    qualified: str
    score: float


def reciprocal_rank_fusion(rankings: Iterable[Sequence[str]], k: int = RRF_K) -> list[Hit]:
    """Fuse rankings (best first) into one: each item scores ``sum(1 / (k + rank))``."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, name in enumerate(ranking, start=1):
            scores[name] = scores.get(name, 0.0) + 1.0 / (k + rank)
    return [Hit(n, s) for n, s in sorted(scores.items(), key=lambda item: (-item[1], item[0]))]


class ToolRetriever:
    """Ranks a fixed set of tools for task texts; build a new one when the tools change."""

    def __init__(self, tools: Sequence[ToolDoc], embedder: _Embedder | None = None) -> None:
        self.tools = list(tools)
        self._index = {t.qualified: i for i, t in enumerate(self.tools)}
        self._bm25 = BM25Index([t.keyword_tokens() for t in self.tools])
        self._embedder = embedder
        self._vectors: Any = None
        if embedder is not None and self.tools:
            self._vectors = _matrix(embedder.embed([t.embedding_text() for t in self.tools]))

    @property
    def has_embeddings(self) -> bool:
        return self._vectors is not None

    def _among(self, allowed: Callable[[str], bool] | None) -> list[int]:
        if allowed is None:
            return list(range(len(self.tools)))
        return [i for i, t in enumerate(self.tools) if allowed(t.qualified)]

    def keyword(self, task: str, among: list[int]) -> list[Hit]:
        scores = self._bm25.scores(tokenize(task), among)
        ranked = sorted(scores.items(), key=lambda item: (-item[1], self.tools[item[0]].qualified))
        return [Hit(self.tools[i].qualified, s) for i, s in ranked]

    def embedding(self, task: str, among: list[int], query_vector: Any = None) -> list[Hit]:
        if self._vectors is None or self._embedder is None or not among:
            return []
        import numpy as np

        vector = (
            query_vector if query_vector is not None else _matrix(self._embedder.embed([task]))[0]
        )
        sims = self._vectors[among] @ vector
        order = np.argsort(-sims, kind="stable")
        return [Hit(self.tools[among[j]].qualified, float(sims[j])) for j in order]

    def search(
        self,
        task: str,
        k: int = 8,
        *,
        mode: Mode = "fused",
        allowed: Callable[[str], bool] | None = None,
        query_vector: Any = None,
    ) -> list[Hit]:
        """The top ``k`` tools for ``task`` among those ``allowed`` (best first)."""
        if k < 1:
            return []
        among = self._among(allowed)
        if mode == "keyword" or (mode == "fused" and not self.has_embeddings):
            return self.keyword(task, among)[:k]
        if mode == "embedding":
            return self.embedding(task, among, query_vector)[:k]
        depth = max(50, 4 * k)
        fused = reciprocal_rank_fusion(
            [
                [h.qualified for h in self.keyword(task, among)[:depth]],
                [h.qualified for h in self.embedding(task, among, query_vector)[:depth]],
            ]
        )
        return fused[:k]

    def embed_queries(self, tasks: Sequence[str]) -> Any:
        """Embed many task texts at once (for evaluation), or None without an embedder."""
        if self._embedder is None:
            return None
        return _matrix(self._embedder.embed(list(tasks)))


class CachingEmbedder:
    """Remembers the vector of each text, so re-indexing unchanged tools costs nothing."""

    def __init__(self, inner: _Embedder, max_entries: int = 20_000) -> None:
        self.inner = inner
        self.max_entries = max_entries
        self._cache: dict[str, Any] = {}

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, row in zip(missing, _matrix(self.inner.embed(missing)), strict=True):
                if len(self._cache) >= self.max_entries:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[text] = row
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0))


def _matrix(raw: Any) -> Any:
    import numpy as np

    matrix = np.asarray(raw, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms
