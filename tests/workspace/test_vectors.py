"""The fast vector scan (int8 first pass + exact re-score) returns the exact top results.

Quality, not timing: every kernel is checked against a plain numpy oracle that
scores all rows in float32 and applies the filters in Python, on generated data
dense enough (clusters, duplicates) that a sloppy first pass would show.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from microhive.workspace.paths import in_folder
from microhive.workspace.vectors import KERNELS, VectorMatrix, best_rows, quantize

DIM = 384
FOLDERS = ("notes", "notes/deep", "papers", "papers-old", "misc")
TYPES = ("text/markdown", "text/plain", "application/json")


def _kernels() -> list[str]:
    try:
        import simsimd  # noqa: F401
    except ImportError:
        return ["numpy", "exact"]
    return list(KERNELS)


def _data(n: int, seed: int = 3) -> tuple[NDArray[np.float32], list[tuple[str, str, str]]]:
    """Clustered unit vectors (near neighbours crowd together) plus exact duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, DIM)).astype(np.float32)
    vecs = centres[rng.integers(0, 64, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    vecs[n - 50 :] = vecs[:50]  # identical chunks (a copied file): exact ties
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    metas = [
        (
            "w" if i % 7 else "other",
            f"{FOLDERS[i % len(FOLDERS)]}/f{i // 4}.md",
            TYPES[i % len(TYPES)],
        )
        for i in range(n)
    ]
    return vecs, metas


def _passing(
    metas: list[tuple[str, str, str]],
    *,
    ws: str = "w",
    folder: str = "",
    types: tuple[str, ...] = (),
    allowed: tuple[str, ...] = (),
) -> NDArray[np.intp]:
    """Rows that pass the filters, decided row by row in plain Python."""
    return np.array(
        [
            i
            for i, (w, path, ctype) in enumerate(metas)
            if w == ws
            and (not folder or in_folder(path, folder))
            and (not allowed or any(in_folder(path, f) for f in allowed))
            and (not types or ctype.startswith(types))
        ],
        dtype=np.intp,
    )


def _oracle(
    scores: NDArray[np.float32], rows: NDArray[np.intp], ids: list[int], k: int
) -> list[int]:
    """Exact top-k of ``rows`` by a full sort: score descending, then id."""
    key = np.asarray(ids)[rows]
    return [int(i) for i in key[np.lexsort((key, -scores[rows]))][:k]]


@pytest.fixture(scope="module")
def dataset() -> tuple[NDArray[np.float32], list[tuple[str, str, str]], list[int]]:
    vecs, metas = _data(20_000)
    ids = [1000 + 3 * i for i in range(len(vecs))]
    return vecs, metas, ids


def _filled(
    kernel: str, data: tuple[NDArray[np.float32], list[tuple[str, str, str]], list[int]]
) -> VectorMatrix:
    vecs, metas, ids = data
    m = VectorMatrix(DIM, kernel=kernel)
    for s in range(0, len(ids), 3000):  # several adds: the matrix grows on the way
        m.add(ids[s : s + 3000], vecs[s : s + 3000], metas[s : s + 3000])
    return m


def _queries(vecs: NDArray[np.float32], count: int = 25) -> NDArray[np.float32]:
    rng = np.random.default_rng(11)
    q = vecs[rng.integers(0, len(vecs), count)] + 0.2 * rng.standard_normal((count, DIM))
    q = q.astype(np.float32)
    out: NDArray[np.float32] = q / np.linalg.norm(q, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("kernel", _kernels())
def test_the_fast_path_returns_the_exact_top_results(
    kernel: str, dataset: tuple[NDArray[np.float32], list[tuple[str, str, str]], list[int]]
) -> None:
    vecs, metas, ids = dataset
    m = _filled(kernel, dataset)
    # Identical vectors tie exactly, and BLAS may order such a tie either way
    # (its last bit depends on a row's position): compare copies as one.
    same = {ids[len(ids) - 50 + j]: ids[j] for j in range(50)}

    def canon(result: list[int]) -> list[int]:
        return [same.get(i, i) for i in result]

    cases: list[dict[str, object]] = [
        {},
        {"folder": "notes"},  # also notes/deep, never papers-old for "papers"
        {"folder": "papers"},
        {"types": ("text/",)},
        {"allowed": ("notes/deep", "misc")},
        {"folder": "notes", "types": ("text/plain",)},  # few rows: direct exact scan
        {"ws": "other"},
        {"ws": "nobody"},
    ]
    passing = [_passing(metas, **case) for case in cases]  # type: ignore[arg-type]
    for q in _queries(vecs):
        scores = vecs @ q
        for case, rows in zip(cases, passing, strict=True):
            for k in (1, 10, 50):
                got = m.top(q, k, **{"ws": "w", **case})  # type: ignore[arg-type]
                assert canon(got) == canon(_oracle(scores, rows, ids, k)), (kernel, case, k)


@pytest.mark.parametrize("kernel", _kernels())
def test_removed_rows_are_never_returned(
    kernel: str, dataset: tuple[NDArray[np.float32], list[tuple[str, str, str]], list[int]]
) -> None:
    vecs, metas, ids = dataset
    m = _filled(kernel, dataset)
    q = _queries(vecs, 1)[0]
    first = m.top(q, 20, ws="w")
    dead = frozenset(first[::2])
    m.remove(sorted(dead))
    rows = np.array([i for i in _passing(metas) if ids[i] not in dead], dtype=np.intp)
    assert m.top(q, 20, ws="w") == _oracle(vecs @ q, rows, ids, 20)
    assert len(m) == len(ids) - len(dead)


def test_quantized_scores_stay_close_to_exact() -> None:
    vecs, _ = _data(2000)
    q8, scale = quantize(vecs)
    back = q8.astype(np.float32) * scale[:, None]
    assert float(np.abs(back - vecs).max()) <= float(scale.max()) / 2 + 1e-7
    query = _queries(vecs, 1)[0]
    assert float(np.abs(back @ query - vecs @ query).max()) < 5e-3


def test_best_rows_breaks_ties_by_smaller_id() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1], np.float32)
    ids = np.array([40, 30, 20, 10, 0], np.int64)
    assert [int(ids[i]) for i in best_rows(scores, 3, ids)] == [10, 30, 20]


def test_the_vector_matrix_compacts_after_many_overwrites() -> None:
    m = VectorMatrix(8)
    rng = np.random.default_rng(0)
    next_id = 0
    vecs = np.zeros((10, 8), np.float32)
    for _ in range(300):  # 300 overwrites of a 10-chunk file
        ids = list(range(next_id, next_id + 10))
        next_id += 10
        vecs = rng.standard_normal((10, 8)).astype(np.float32)
        m.remove([i - 10 for i in ids])
        m.add(ids, vecs, [("w", "f.md", "text/plain")] * 10)
    assert len(m.rows) == 10
    assert m.size < 2100  # compacted, not 3000 rows of tombstones
    assert m.top(vecs[3], 1, ws="w") == [next_id - 10 + 3]
    assert m.top(vecs[3], 1, ws="w", folder="elsewhere") == []


def test_an_unknown_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        VectorMatrix(8, kernel="gpu")
