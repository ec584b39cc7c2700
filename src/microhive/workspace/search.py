"""Pieces of hybrid search every backend shares: query terms, fusion, snippets."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import TypeVar

from microhive.errors import InvalidInput
from microhive.workspace.paths import clean_folder, clean_workspace_name

__all__ = [
    "KEYWORD_WEIGHT",
    "RRF_K",
    "SEARCH_MODES",
    "check_search",
    "fts_query",
    "highlight",
    "query_terms",
    "rrf",
]

#: What ``mode`` may be: keyword only, embeddings only, or both fused.
SEARCH_MODES = ("hybrid", "keyword", "vector")

#: Reciprocal Rank Fusion constant. The textbook 60 suits long result lists; our
#: lists are 50 candidates deep and the top few ranks carry the signal, so a
#: small k keeps the head of each list decisive (measured in
#: benchmarks/workspace.py, which also reports the textbook setting).
RRF_K = 5
#: Weight of the keyword list against the embedding list (1.0). BM25 is kept for
#: what embeddings miss (identifiers, rare names) without letting common-word
#: matches outvote a clear semantic match.
KEYWORD_WEIGHT = 0.5
_WORD = re.compile(r"\w+", re.UNICODE)
T = TypeVar("T", bound=Hashable)


def query_terms(query: str) -> list[str]:
    """Lower-cased distinct words of a query, in order."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(query.lower()):
        seen.setdefault(w, None)
    return list(seen)


def fts_query(query: str) -> str:
    """An FTS5 MATCH expression: every term quoted (no operator injection), OR-ed."""
    return " OR ".join(f'"{t}"' for t in query_terms(query))


def rrf(
    rankings: Sequence[Sequence[T]], weights: Sequence[float] | None = None, k: float = RRF_K
) -> dict[T, float]:
    """Fuse ranked lists: score(id) = sum over lists of weight / (k + rank)."""
    scores: dict[T, float] = {}
    for i, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[i]
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return scores


def highlight(text: str, terms: Sequence[str], *, width: int = 200) -> str:
    """A window of ``text`` around the first query term, terms wrapped in ``**``."""
    flat = " ".join(text.split())
    if not terms:
        return flat[:width]
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)) + r")\w*",
        re.IGNORECASE,
    )
    first = pattern.search(flat)
    start = 0 if first is None else max(0, first.start() - width // 3)
    if start:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < first.start() else start  # type: ignore[union-attr]
    window = flat[start : start + width]
    marked = pattern.sub(lambda m: f"**{m.group(0)}**", window)
    return ("..." if start else "") + marked + ("..." if start + width < len(flat) else "")


def check_search(
    ws: str, folder: str | None, query: str, *, mode: str, limit: int
) -> tuple[str, str]:
    """Validate a search request the same way in every backend: clean (ws, folder)."""
    ws, folder_ = clean_workspace_name(ws), clean_folder(folder)
    if mode not in SEARCH_MODES:
        raise InvalidInput(f"search mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    if not query.strip():
        raise InvalidInput("search query is empty")
    if not 1 <= limit <= 100:
        raise InvalidInput("limit must be between 1 and 100")
    return ws, folder_
