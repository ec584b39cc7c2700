"""Tool retrieval: show a model only the tools that fit its task.

:class:`ToolRetriever` ranks tools by BM25 keywords and by embeddings, fused by
reciprocal rank; :func:`load_eval_set` and :func:`recall` measure it on the
evaluation set shipped in ``data/`` (see ``benchmarks/tool_retrieval.py``).
"""

from __future__ import annotations

from .evaluation import EvalSet, load_eval_set, recall
from .keyword import BM25Index, tokenize
from .retriever import (
    CachingEmbedder,
    Hit,
    Mode,
    ToolDoc,
    ToolRetriever,
    reciprocal_rank_fusion,
)

__all__ = [
    "BM25Index",
    "CachingEmbedder",
    "EvalSet",
    "Hit",
    "Mode",
    "ToolDoc",
    "ToolRetriever",
    "load_eval_set",
    "recall",
    "reciprocal_rank_fusion",
    "tokenize",
]
