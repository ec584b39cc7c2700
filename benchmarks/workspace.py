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
* search latency at 10,000 and 100,000 chunks: hybrid (FTS5 BM25 + vector scan,
  RRF), keyword and vector, p50/p99, with the query vector precomputed. The
  vector scan is the int8 first pass + exact re-score; the baseline beside it is
  the exact float32 scan of the same index, in the same run. Also: a folder-
  filtered hybrid search, recall of the exact top-k in the fast scan's top-k
  (random vectors and clustered ones), and at 100k the end-to-end hybrid search
  with the real MiniLM query embedding included (and that embedding alone).
  Chunks are synthetic text with random vectors;
* retrieval quality on ``benchmarks/data/workspace_retrieval.json``: nDCG@10
  and recall@10 for keyword only, embeddings only and hybrid.

Targets: search p50 <= 15 ms at 100,000 chunks (``search_hybrid_100k_p50_vs_target``
<= 1.0 with the query vector precomputed; ``search_hybrid_e2e_100k_p50_ms`` is the
end-to-end figure); hybrid nDCG@10 >= the better of keyword and embeddings
(ratio >= 1.0); fast-vs-exact vector recall >= 0.999.
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
from microhive.workspace.vectors import RESCORE, VectorMatrix

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


class _ModelTimedEmbedder:
    """The real MiniLM for query embedding, under the stored vectors' name.

    The synthetic store holds random vectors tagged "random"; opening it with the
    real model's name would re-index everything. Scores against random vectors
    mean nothing, but the time to embed the query and scan 100k rows is real.
    """

    name = "random"
    dimension = 384

    def __init__(self) -> None:
        self.model = open_embedder("minilm")

    def embed(self, texts: Any) -> np.ndarray:
        return self.model.embed(texts)


def _p50_ms(lat: list[float]) -> float:
    return pct(lat, 0.5) * 1000


def _timed(fn: Any, items: list[Any]) -> list[float]:
    lat = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        lat.append(time.perf_counter() - t)
    return lat


def build_scale_store(n: int, root: Path) -> tuple[LocalStore, list[str], np.ndarray]:
    """``n`` chunks of Zipf-distributed words with random unit vectors, 4 per file,
    files spread over 10 folders; plus a query set (3 words each, random vectors)."""
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
                    f"d{((start + i) // 4) % 10}/f{(start + i) // 4}.md",
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
    qs = [" ".join(vocab[int(w)] for w in rng.choice(2000, size=3)) for _ in range(400)]
    return store, qs, _RandomEmbedder().embed(qs)


def bench_scale(n: int, queries: int, root: Path, *, end_to_end: bool) -> None:
    """Search latency at ``n`` chunks: the fast scan (int8 first pass + exact
    re-score) against the exact float32 scan as the in-run baseline, with the
    query vector precomputed; then end to end (real query embedding included)."""
    store, qs, qv = build_scale_store(n, root)
    qs, qv = qs[:queries], qv[:queries]
    pairs = list(zip(qs, qv, strict=True))
    tag = f"{n // 1000}k"
    exact = LocalIndex(store, _RandomEmbedder(), vector_kernel="exact")
    fast = LocalIndex(store, _RandomEmbedder())
    kernel = fast._vectors.kernel
    results: dict[tuple[str, str], list[float]] = {}
    halves = (pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :])
    for mode in ("hybrid", "keyword", "vector"):
        for half in halves:  # interleaved, so machine load hits both alike
            for name, index in (("exact", exact), ("fast", fast)):
                results.setdefault((name, mode), []).extend(
                    _timed(
                        lambda p, i=index, m=mode: i.search(
                            "bench", p[0], mode=m, limit=10, query_vector=p[1]
                        ),
                        half,
                    )
                )
    for mode in ("hybrid", "keyword", "vector"):
        lat, base = results[("fast", mode)], results[("exact", mode)]
        target = "<= 15" if n >= 100_000 and mode == "hybrid" else None
        emit(
            f"search_{mode}_{tag}_p50_ms",
            _p50_ms(lat),
            "ms",
            baseline=_p50_ms(base) if mode != "keyword" else None,
            target=target,
            note=f"query vector precomputed; vector kernel {kernel}, baseline exact float32 scan"
            if mode != "keyword"
            else "FTS5 BM25 (ORDER BY rank)",
        )
        if mode == "hybrid":
            emit(
                f"search_{mode}_{tag}_p99_ms",
                pct(lat, 0.99) * 1000,
                "ms",
                baseline=pct(base, 0.99) * 1000,
            )
            if n >= 100_000:
                emit(
                    f"search_hybrid_{tag}_p50_vs_target",
                    _p50_ms(lat) / 15,
                    "x target",
                    target="<= 1.0",
                    note="p50 / 15 ms (query vector precomputed)",
                )
    lat = _timed(
        lambda p: fast.search("bench", p[0], folder="d3", limit=10, query_vector=p[1]), pairs
    )
    base = _timed(
        lambda p: exact.search("bench", p[0], folder="d3", limit=10, query_vector=p[1]), pairs
    )
    emit(
        f"search_hybrid_folder_{tag}_p50_ms",
        _p50_ms(lat),
        "ms",
        baseline=_p50_ms(base),
        note="folder filter (1/10 of the chunks), query vector precomputed",
    )
    recall_vs_exact(fast, exact, qv, tag, "random vectors")
    exact.close()
    if end_to_end:
        model = _ModelTimedEmbedder()
        fast.embedder = model  # same matrix; now the query is embedded by the real model
        model.embed(["warm up"])
        embed = _timed(lambda q: model.embed([q]), qs)
        lat = _timed(lambda q: fast.search("bench", q, limit=10), qs)
        emit("query_embedding_p50_ms", _p50_ms(embed), "ms", note="real MiniLM, one query")
        emit(
            f"search_hybrid_e2e_{tag}_p50_ms",
            _p50_ms(lat),
            "ms",
            target="<= 15",
            note="end to end: real MiniLM query embedding + BM25 + vector scan + snippets",
        )
        emit(f"search_hybrid_e2e_{tag}_p99_ms", pct(lat, 0.99) * 1000, "ms")
    fast.close()
    store.close()


def recall_vs_exact(
    fast: LocalIndex, exact: LocalIndex, qv: np.ndarray, tag: str, what: str
) -> None:
    """Recall of the exact top-k in the fast scan's top-k (k = 10 and the fusion depth 50)."""
    for k in (10, 50):
        hit = total = 0
        for v in qv:
            want = exact._vectors.top(v, k, ws="bench", exact=True)
            got = fast._vectors.top(v, k, ws="bench")
            hit += len(set(want) & set(got))
            total += len(want)
        emit(
            f"vector_recall@{k}_fast_vs_exact_{tag}",
            hit / total,
            "score",
            target=">= 0.999",
            note=f"int8 first pass + exact re-score of {RESCORE}, {what}",
        )


def bench_recall_clustered(n: int) -> None:
    """The same recall on clustered vectors, where near neighbours crowd together
    (closer to real embeddings than uniform random ones)."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((256, 384)).astype(np.float32)
    exact, fast = VectorMatrix(384, kernel="exact"), VectorMatrix(384)
    for start in range(0, n, 10_000):
        vecs = centres[rng.integers(0, 256, 10_000)]
        vecs = vecs + 0.35 * rng.standard_normal(vecs.shape).astype(np.float32)
        ids = list(range(start, start + 10_000))
        metas = [("bench", f"f{i}.md", "text/plain") for i in ids]
        exact.add(ids, vecs, metas)
        fast.add(ids, vecs, metas)
    queries = centres[rng.integers(0, 256, 100)] + 0.5 * rng.standard_normal((100, 384))
    for k in (10, 50):
        hit = total = 0
        for q in queries.astype(np.float32):
            want = exact.top(q, k, ws="bench")
            hit += len(set(want) & set(fast.top(q, k, ws="bench")))
            total += len(want)
        emit(
            f"vector_recall@{k}_fast_vs_exact_{n // 1000}k_clustered",
            hit / total,
            "score",
            target=">= 0.999",
            note=f"256 clusters; kernel {fast.kernel}",
        )


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
            bench_scale(n, 100 if args.quick else 300, root, end_to_end=n >= 100_000)
        bench_recall_clustered(20_000 if args.quick else 100_000)
    emit("load_average_1m_at_end", os.getloadavg()[0], "runnable", note=f"{os.cpu_count()} CPUs")
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
