"""The tool-retrieval evaluation set and its metrics.

``data/tools.json`` holds hand-written tool definitions across many domains
(calendar, email, finance, devops, health, ...) and ``data/queries.json`` holds
hand-written task texts, each labelled with the one tool that fits it. Recall@k
is the share of queries whose labelled tool is among the top ``k`` results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .retriever import Mode, ToolDoc, ToolRetriever

__all__ = ["EvalSet", "load_eval_set", "recall"]


@dataclass(frozen=True)
class EvalSet:
    tools: list[ToolDoc]
    queries: list[tuple[str, str]]  # (task text, qualified tool name)


def _read(name: str) -> Any:
    path = resources.files("microhive.mcp.retrieval").joinpath("data", name)
    return json.loads(path.read_text(encoding="utf-8"))


def load_eval_set() -> EvalSet:
    tools = [
        ToolDoc.from_definition(f"{t['namespace']}.{t['name']}", t)
        for t in _read("tools.json")["tools"]
    ]
    queries = [(q["query"], q["tool"]) for q in _read("queries.json")["queries"]]
    return EvalSet(tools, queries)


def recall(
    retriever: ToolRetriever,
    queries: list[tuple[str, str]],
    mode: Mode,
    ks: tuple[int, ...] = (1, 5),
) -> dict[int, float]:
    """Recall@k for each k in ``ks`` over the labelled queries."""
    vectors = retriever.embed_queries([q for q, _ in queries]) if mode != "keyword" else None
    hits = dict.fromkeys(ks, 0)
    for i, (task, label) in enumerate(queries):
        vector = vectors[i] if vectors is not None else None
        top = [h.qualified for h in retriever.search(task, max(ks), mode=mode, query_vector=vector)]
        for k in ks:
            if label in top[:k]:
                hits[k] += 1
    return {k: hits[k] / len(queries) for k in ks}
