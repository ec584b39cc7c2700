"""Tool retrieval benchmark: recall on the evaluation set and the prompt-size saving.

Usage::

    .venv/bin/python benchmarks/tool_retrieval.py [--json] [--k 5]

The evaluation set ships with microhive (``microhive/mcp/retrieval/data``):
hand-written tool definitions across many domains and hand-written task texts,
each labelled with the tool that fits it. For keyword (BM25), embedding
(all-MiniLM-L6-v2, bundled) and fused (reciprocal rank fusion) retrieval it
reports recall@1 and recall@5, and how much smaller a prompt listing the top-k
tools is than one listing every tool (characters of name + description + JSON
schema; tokens estimated as characters / 4). Baseline: a naive ranking by the
number of task words found in each tool's name and description.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from microhive.embeddings import open_embedder
from microhive.mcp.retrieval import ToolDoc, ToolRetriever, load_eval_set, recall


def overlap_recall(tools: list[ToolDoc], queries: list[tuple[str, str]], k: int) -> float:
    texts = {
        t.qualified: set(re.findall(r"[a-z]+", f"{t.qualified} {t.description}".lower()))
        for t in tools
    }
    hits = 0
    for task, label in queries:
        words = set(re.findall(r"[a-z]+", task.lower()))
        ranked = sorted(tools, key=lambda t: -len(words & texts[t.qualified]))
        hits += label in [t.qualified for t in ranked[:k]]
    return hits / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--k", type=int, default=5, help="tools shown to the model (default 5)")
    parser.add_argument(
        "--quick", action="store_true", help="accepted for symmetry; the run is small"
    )
    args = parser.parse_args()

    ev = load_eval_set()
    started = time.perf_counter()
    retriever = ToolRetriever(ev.tools, open_embedder("minilm"))
    build_s = time.perf_counter() - started
    baseline5 = overlap_recall(ev.tools, ev.queries, 5)
    baseline1 = overlap_recall(ev.tools, ev.queries, 1)
    lines: list[dict[str, Any]] = [
        {"metric": "catalogue.tools", "value": len(ev.tools), "unit": "tools"},
        {"metric": "catalogue.queries", "value": len(ev.queries), "unit": "queries"},
        {"metric": "index.build", "value": round(build_s, 3), "unit": "s"},
    ]
    for mode in ("keyword", "embedding", "fused"):
        started = time.perf_counter()
        r = recall(retriever, ev.queries, mode)  # type: ignore[arg-type]
        per_query = (time.perf_counter() - started) / len(ev.queries) * 1000
        for k, base in ((1, baseline1), (5, baseline5)):
            lines.append(
                {
                    "metric": f"{mode}.recall@{k}",
                    "value": round(r[k], 4),
                    "unit": "fraction",
                    "baseline": round(base, 4),
                    "ratio": round(r[k] / base, 3) if base else None,
                }
            )
        lines.append(
            {"metric": f"{mode}.latency_per_query", "value": round(per_query, 3), "unit": "ms"}
        )
    every = sum(t.prompt_size() for t in ev.tools)
    sizes = {t.qualified: t.prompt_size() for t in ev.tools}
    shown = [
        sum(sizes[h.qualified] for h in retriever.search(task, args.k, mode="fused"))
        for task, _ in ev.queries
    ]
    mean_shown = sum(shown) / len(shown)
    lines.append(
        {
            "metric": f"prompt.top{args.k}_vs_all_tools",
            "value": round(mean_shown),
            "unit": "chars",
            "baseline": every,
            "ratio": round(mean_shown / every, 4),
        }
    )
    lines.append(
        {
            "metric": f"prompt.tokens_saved_per_call_top{args.k}",
            "value": round((every - mean_shown) / 4),
            "unit": "tokens (chars/4)",
        }
    )
    if args.json:
        for line in lines:
            print(json.dumps(line))
        return
    print(
        f"{len(ev.tools)} tools, {len(ev.queries)} labelled queries; index built in {build_s:.2f}s"
    )
    print(f"{'retrieval':<12}{'recall@1':>10}{'recall@5':>10}{'ms/query':>10}")
    print(f"{'baseline':<12}{baseline1:>10.3f}{baseline5:>10.3f}{'':>10}")
    for mode in ("keyword", "embedding", "fused"):
        r1 = next(x["value"] for x in lines if x["metric"] == f"{mode}.recall@1")
        r5 = next(x["value"] for x in lines if x["metric"] == f"{mode}.recall@5")
        ms = next(x["value"] for x in lines if x["metric"] == f"{mode}.latency_per_query")
        print(f"{mode:<12}{r1:>10.3f}{r5:>10.3f}{ms:>10.2f}")
    print(
        f"prompt: top-{args.k} tools = {mean_shown:.0f} chars vs all tools = {every} chars "
        f"({mean_shown / every:.1%}; ~{(every - mean_shown) / 4:.0f} tokens saved per call)"
    )


if __name__ == "__main__":
    main()
