"""Workspace benchmark: embeddings, indexing, search latency and retrieval quality.

Usage::

    .venv/bin/python benchmarks/workspace.py [--quick] [--json]

What is measured:

* embedder: the numpy all-MiniLM-L6-v2 against a torch run of the same weights
  (when torch + transformers are installed): texts/s, memory (RSS growth) and the
  largest difference between the two sets of vectors;
* write-to-searchable: PUT a file with a unique word, then search until it is
  found (real model, background indexer), p50;
* indexing throughput: chunks/s for a batch of multi-chunk files (real model);
* search latency at 10,000 and 100,000 chunks: hybrid (FTS5 BM25 + brute-force
  cosine, RRF), p50/p99, with the query vector precomputed; the query embedding
  time is reported separately. Chunks are synthetic text with random vectors;
* retrieval quality on ``benchmarks/data/workspace_retrieval.json``: nDCG@10
  and recall@10 for keyword only, embeddings only and hybrid.

Targets: search p50 <= 15 ms at 100,000 chunks; hybrid nDCG@10 >= the better of
keyword and embeddings (ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from microhive.embeddings import open_embedder
from microhive.workspace import Workspace, WorkspaceSettings
from microhive.workspace.backend import EmbeddedBackend
from microhive.workspace.index import LocalIndex
from microhive.workspace.local import LocalStore
from microhive.workspace.search import rrf

DATA = Path(__file__).parent / "data" / "workspace_retrieval.json"
RESULTS: list[dict[str, Any]] = []


def emit(
    metric: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    target: str | None = None,
    note: str = "",
) -> None:
    ratio = round(value / baseline, 3) if baseline else None
    RESULTS.append(
        {
            "metric": metric,
            "value": float(f"{value:.4g}"),
            "unit": unit,
            "baseline": None if baseline is None else float(f"{baseline:.4g}"),
            "ratio": ratio,
            "target": target,
            "note": note,
        }
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss() -> float:
    return psutil.Process().memory_info().rss / 2**20


# ------------------------------------------------------------------ embedder


def bench_embedder(quick: bool) -> None:
    docs = list(json.loads(DATA.read_text())["documents"].values())
    texts = (docs * 4)[: 32 if quick else 128]
    before = rss()
    started = time.perf_counter()
    emb = open_embedder("minilm")
    load = time.perf_counter() - started
    emb.embed(texts[:4])
    t = time.perf_counter()
    ours = emb.embed(texts)
    ours_rate = len(texts) / (time.perf_counter() - t)
    ours_mem = rss() - before
    emit("embed_load_s", load, "s", note="numpy MiniLM, weights from the bundled package")
    emit("embed_rss_mb", ours_mem, "MB", note="numpy MiniLM: RSS growth after load + embed")
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from microhive.embeddings.minilm import bundled_model_dir
    except ImportError:
        emit("embed_numpy_texts_per_s", ours_rate, "texts/s", note="torch not installed")
        return
    before = rss()
    folder = str(bundled_model_dir())
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def ref(batch: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(batch), 32):
                enc = tok(
                    batch[i : i + 32],
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out)

    ref(texts[:4])
    t = time.perf_counter()
    theirs = ref(texts)
    ref_rate = len(texts) / (time.perf_counter() - t)
    emit(
        "embed_numpy_texts_per_s",
        ours_rate,
        "texts/s",
        baseline=ref_rate,
        note="baseline: torch 2.13 CPU, same weights",
    )
    emit("embed_torch_rss_mb", rss() - before, "MB", note="torch + transformers, same model")
    emit("embed_max_abs_diff_vs_torch", float(np.abs(ours - theirs).max()), "abs", target="<= 1e-4")


# ------------------------------------------------------------- live service


async def bench_live(quick: bool, root: Path) -> None:
    data = json.loads(DATA.read_text())
    cfg = WorkspaceSettings(store=f"file://{root / 'live'}", embedder="minilm", poll_interval=0.05)
    async with Workspace(cfg) as ws:
        # Retrieval quality.
        for path, text in data["documents"].items():
            await ws.write(path, text)
        await wait_indexed(ws, list(data["documents"]))
        modes = ("keyword", "vector", "hybrid", "rrf60")
        scores: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        for item in data["queries"]:
            ranked: dict[str, list[str]] = {}
            for mode in ("keyword", "vector", "hybrid"):
                hits = await ws.search(item["q"], mode=mode, limit=50)
                ranked[mode] = list(dict.fromkeys(h.path for h in hits))
            # The textbook setting (k=60, equal weights), for comparison.
            fused = rrf([ranked["keyword"], ranked["vector"]], k=60)
            ranked["rrf60"] = sorted(fused, key=lambda p: -fused[p])
            for mode in modes:
                scores[mode].append(ndcg_recall(ranked[mode][:10], set(item["relevant"])))
        ndcg = {m: statistics.mean(s[0] for s in v) for m, v in scores.items()}
        recall = {m: statistics.mean(s[1] for s in v) for m, v in scores.items()}
        best = max(ndcg["keyword"], ndcg["vector"])
        n_q, n_d = len(data["queries"]), len(data["documents"])
        for mode in ("keyword", "vector"):
            emit(f"ndcg@10_{mode}", ndcg[mode], "score", note=f"{n_q} queries, {n_d} docs")
            emit(f"recall@10_{mode}", recall[mode], "score")
        emit(
            "ndcg@10_hybrid",
            ndcg["hybrid"],
            "score",
            baseline=best,
            target="ratio >= 1.0 (vs the better single method)",
            note="weighted RRF k=5, keyword weight 0.5",
        )
        emit(
            "recall@10_hybrid",
            recall["hybrid"],
            "score",
            baseline=max(recall["keyword"], recall["vector"]),
        )
        emit(
            "ndcg@10_hybrid_rrf60_equal",
            ndcg["rrf60"],
            "score",
            baseline=best,
            note="textbook RRF (k=60, equal weights), for comparison",
        )

        # Write-to-searchable.
        lat = []
        for i in range(5 if quick else 15):
            word = f"zq{i}x{random.randrange(10**6)}"
            t = time.perf_counter()
            await ws.write(f"probe/p{i}.md", f"Probe {word}: a note about honey and hives.")
            await until_found(ws, word, f"probe/p{i}.md")
            lat.append(time.perf_counter() - t)
        emit(
            "write_to_searchable_p50_ms",
            pct(lat, 0.5) * 1000,
            "ms",
            note="PUT -> indexed (real model) -> found by hybrid search",
        )

        # Indexing throughput.
        paragraph = " ".join(data["documents"].values())
        n_docs = 6 if quick else 20
        paths = [f"bulk/d{i}.md" for i in range(n_docs)]
        t = time.perf_counter()
        for i, path in enumerate(paths):
            start = (i * 977) % len(paragraph)
            await ws.write(path, (paragraph[start:] + paragraph)[:3000])
        await wait_indexed(ws, paths)
        elapsed = time.perf_counter() - t
        backend = ws.backend
        assert isinstance(backend, EmbeddedBackend)
        chunks = backend.store.db.execute(
            "SELECT COUNT(*) FROM chunks WHERE path LIKE 'bulk/%'"
        ).fetchone()[0]
        emit(
            "indexing_chunks_per_s",
            chunks / elapsed,
            "chunks/s",
            note=f"{chunks} chunks of ~800 chars, real model, 2-core machine",
        )
        qt = []
        for item in data["queries"][:20]:
            t = time.perf_counter()
            ws.embedder.embed([item["q"]])
            qt.append(time.perf_counter() - t)
        emit("query_embedding_p50_ms", pct(qt, 0.5) * 1000, "ms")


async def until_found(ws: Workspace, word: str, path: str) -> None:
    """Poll search until ``path`` is a hit (the polling is what is measured)."""
    for _ in range(100_000):
        if any(h.path == path for h in await ws.search(word, limit=3)):
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{path} never became searchable")


async def wait_indexed(ws: Workspace, paths: list[str]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = [(await ws.info(p)).index_state for p in paths]
        if all(s != "pending" for s in states):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("indexing did not finish")


def ndcg_recall(ranked: list[str], relevant: set[str]) -> tuple[float, float]:
    dcg = sum(1 / math.log2(i + 2) for i, p in enumerate(ranked) if p in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return dcg / ideal, len(relevant & set(ranked)) / len(relevant)


# ------------------------------------------------------------ search at scale


class _RandomEmbedder:
    name = "random"
    dimension = 384

    def embed(self, texts: Any) -> np.ndarray:
        rng = np.random.default_rng(abs(hash(tuple(texts))) % 2**32)
        v = rng.standard_normal((len(texts), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def bench_scale(n: int, queries: int, root: Path) -> None:
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(20000)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    store = LocalStore(root / f"scale{n}")
    batch = 5000
    with store.transaction() as db:
        for start in range(0, n, batch):
            words = rng.choice(len(vocab), size=(batch, 40), p=zipf)
            vecs = rng.standard_normal((batch, 384)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            rows = [
                (
                    "bench",
                    f"f{(start + i) // 4}.md",
                    1,
                    (start + i) % 4,
                    "text/markdown",
                    " ".join(vocab[w] for w in words[i]),
                    "random",
                    vecs[i].tobytes(),
                )
                for i in range(batch)
            ]
            db.executemany(
                "INSERT INTO chunks (ws, path, version, ordinal, content_type, text, model, "
                "vector) VALUES (?,?,?,?,?,?,?,?)",
                rows,
            )
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index = LocalIndex(store, _RandomEmbedder())
    qs = [" ".join(vocab[int(w)] for w in rng.choice(2000, size=3)) for _ in range(queries)]
    qv = _RandomEmbedder().embed(qs)
    for mode in ("hybrid", "keyword", "vector"):
        lat = []
        for q, v in zip(qs, qv, strict=True):
            t = time.perf_counter()
            index.search("bench", q, mode=mode, limit=10, query_vector=v)
            lat.append(time.perf_counter() - t)
        label = f"search_{mode}_{n // 1000}k"
        if mode == "hybrid":
            emit(
                f"{label}_p50_ms",
                pct(lat, 0.5) * 1000,
                "ms",
                target="<= 15" if n >= 100_000 else None,
            )
            emit(f"{label}_p99_ms", pct(lat, 0.99) * 1000, "ms")
        else:
            emit(f"{label}_p50_ms", pct(lat, 0.5) * 1000, "ms")
    index.close()
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_embedder(args.quick)
        asyncio.run(bench_live(args.quick, root))
        for n in (10_000, 100_000):
            bench_scale(n, 50 if args.quick else 200, root)
    if args.json:
        for item in RESULTS:
            print(json.dumps(item))
        return
    print(f"{'metric':38} {'value':>12} {'unit':9} {'baseline':>10} {'ratio':>7}  target / note")
    for r in RESULTS:
        base = "" if r["baseline"] is None else f"{r['baseline']:.4g}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        extra = " ".join(x for x in (r["target"], r["note"]) if x)
        print(f"{r['metric']:38} {r['value']:>12.4g} {r['unit']:9} {base:>10} {ratio:>7}  {extra}")


if __name__ == "__main__":
    sys.exit(main())
