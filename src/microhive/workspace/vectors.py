"""The in-memory vector scan every workspace search goes through.

A brute-force scan needs no approximate structure to tune and returns the exact
neighbours, but at 100,000 chunks x 384 dimensions the float32 matrix is 150 MB,
and reading it once per query is memory-bandwidth bound (10-25 ms on a shared
2-core machine). So the scan runs in two passes:

1. **int8 first pass.** Every row is also kept quantised to int8 with its own
   scale (``row ~= scale * int8_row``), a quarter of the bytes. The query is
   quantised the same way and scored against all rows with ``simsimd``'s SIMD
   int8 dot product (about 2 ms at 100k rows); without ``simsimd`` a numpy
   fallback converts cache-sized blocks to float32 and scores them with BLAS.
2. **Exact re-score.** The best :data:`RESCORE` candidates of the first pass
   (at least ``4 * k``) are scored again against the float32 rows and ranked
   by that exact score. The int8 error is ~1e-3 of a cosine, far below the gap
   between rank k and rank 256, so the result equals the exact scan's (measured
   in ``benchmarks/workspace.py``, tested in ``tests/workspace/test_vectors.py``).

Filters (workspace, folder, content type, a token's folders) become one boolean
row mask built from small per-row code arrays *before* scoring: no Python code
runs per row. When the mask keeps only a few rows they are scored exactly and
directly, with no first pass.

The matrix grows by doubling and deletions clear a row's "alive" bit, so
indexing one file never rebuilds it; tombstones are compacted once they are a
quarter of the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from microhive.workspace.paths import in_folder

__all__ = ["KERNELS", "RESCORE", "VectorMatrix", "best_rows", "quantize"]

log = logging.getLogger("microhive.workspace.vectors")

#: Candidates of the int8 pass re-scored exactly (at least ``4 * k``).
RESCORE = 256
#: Below this many filtered rows the exact float32 scan is cheaper than two passes.
_EXACT_BELOW = 4096
#: Rows converted per block by the numpy fallback (fits the L2 cache as float32).
_BLOCK = 512
_INITIAL = 1024
#: First-pass implementations: ``simsimd`` (SIMD int8 dot products), ``numpy``
#: (blocked int8 -> float32 + BLAS) and ``exact`` (float32 only, no first pass).
KERNELS = ("simsimd", "numpy", "exact")

F32 = NDArray[np.float32]


def quantize(vectors: F32) -> tuple[NDArray[np.int8], F32]:
    """Rows as int8 plus the per-row scale that maps them back (``v ~= scale * q``)."""
    peak = np.abs(vectors).max(axis=1) if len(vectors) else np.zeros(0, np.float32)
    scale = (np.maximum(peak, 1e-12) / 127.0).astype(np.float32)
    q = np.rint(vectors / scale[:, None]).clip(-127, 127).astype(np.int8)
    return q, scale


def best_rows(scores: F32, k: int, ids: NDArray[np.int64] | None = None) -> NDArray[np.intp]:
    """Positions of the ``k`` highest scores, best first; equal scores by smaller id.

    ``argpartition`` keeps this O(n) rather than a full sort; the tie-break makes
    the order deterministic, so two scans that agree on scores agree on order.
    """
    n = len(scores)
    if k <= 0 or n == 0:
        return np.zeros(0, np.intp)
    if k < n:
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        part = np.flatnonzero(scores >= kth)  # every row tied with the k-th, then by id
    else:
        part = np.arange(n)
    keys = part if ids is None else ids[part]
    order: NDArray[np.intp] = part[np.lexsort((keys, -scores[part]))][:k]
    return order


_T = TypeVar("_T", bound=np.generic)


def _bigger(a: NDArray[_T], cap: int, used: int) -> NDArray[_T]:
    """A zeroed copy of ``a`` with ``cap`` rows, its first ``used`` rows kept."""
    out = np.zeros((cap, *a.shape[1:]), a.dtype)
    out[:used] = a[:used]
    return out


def _load_simsimd() -> ModuleType | None:
    try:
        import simsimd
    except ImportError:
        log.info("simsimd is not installed: the vector first pass uses the numpy fallback")
        return None
    return simsimd


class _Table:
    """Interned strings (workspace names, paths, content types) -> small int codes.

    Boolean look-up tables over the codes ("is this path inside folder F?") are
    cached per key and only extended for codes added since, so a filter costs
    one Python call per *distinct* string once, then a numpy gather per query.
    """

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.codes: dict[str, int] = {}
        self._luts: dict[object, NDArray[np.bool_]] = {}

    def code(self, value: str) -> int:
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.strings)
            self.strings.append(value)
        return code

    def lut(self, key: object, test: Callable[[str], bool]) -> NDArray[np.bool_]:
        have = self._luts.get(key)
        start = 0 if have is None else len(have)
        if start == len(self.strings) and have is not None:
            return have
        new = np.fromiter((test(s) for s in self.strings[start:]), bool, len(self.strings) - start)
        lut = new if have is None else np.concatenate([have, new])
        if len(self._luts) >= 64:  # many distinct filters: start over rather than grow
            self._luts.clear()
        self._luts[key] = lut
        return lut


class VectorMatrix:
    """Unit vectors keyed by chunk id, with per-row workspace/path/type codes.

    ``kernel`` picks the first pass (see :data:`KERNELS`); by default ``simsimd``
    when it is installed, else ``numpy``. Not thread-safe: callers serialise
    ``add``/``remove`` against ``top`` (the embedded index does all three on the
    event-loop thread).
    """

    def __init__(self, dimension: int, *, kernel: str | None = None) -> None:
        if kernel is not None and kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.dim = dimension
        self._simsimd = _load_simsimd() if kernel in (None, "simsimd") else None
        if kernel == "simsimd" and self._simsimd is None:
            raise ValueError("kernel 'simsimd' needs the simsimd package")
        self.kernel = kernel or ("simsimd" if self._simsimd is not None else "numpy")
        self._reset()

    def _reset(self) -> None:
        cap = _INITIAL
        self.f32 = np.zeros((cap, self.dim), np.float32)
        self.i8 = np.zeros((cap, self.dim), np.int8)
        self.scale = np.zeros(cap, np.float32)
        self.alive = np.zeros(cap, bool)
        self.ids = np.zeros(cap, np.int64)
        self.ws = np.zeros(cap, np.int32)
        self.path = np.zeros(cap, np.int32)
        self.type = np.zeros(cap, np.int32)
        self._ws, self._paths, self._types = _Table(), _Table(), _Table()
        self.rows: dict[int, int] = {}
        self.size = 0
        self.dead = 0

    def __len__(self) -> int:
        return self.size - self.dead

    # --------------------------------------------------------------- writes

    def add(self, ids: Sequence[int], vectors: F32, metas: Sequence[tuple[str, str, str]]) -> None:
        """Append rows; ``metas`` holds ``(workspace, path, content_type)`` per row."""
        need = self.size + len(ids)
        if need > len(self.alive):
            self._grow(max(need, 2 * len(self.alive)))
        s = self.size
        vecs = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        for b in range(0, len(ids), 8192):  # blocks: no 150 MB temporaries on load
            block = vecs[b : b + 8192]
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            rows = slice(s + b, s + b + len(block))
            self.f32[rows] = block / np.maximum(norms, 1e-12)
            self.i8[rows], self.scale[rows] = quantize(self.f32[rows])
        self.alive[s:need] = True
        self.ids[s:need] = ids
        self.ws[s:need] = [self._ws.code(m[0]) for m in metas]
        self.path[s:need] = [self._paths.code(m[1]) for m in metas]
        self.type[s:need] = [self._types.code(m[2]) for m in metas]
        for i, cid in enumerate(ids):
            self.rows[int(cid)] = s + i
        self.size = need

    def _grow(self, cap: int) -> None:
        n = self.size
        self.f32, self.i8 = _bigger(self.f32, cap, n), _bigger(self.i8, cap, n)
        self.scale, self.alive = _bigger(self.scale, cap, n), _bigger(self.alive, cap, n)
        self.ids, self.ws = _bigger(self.ids, cap, n), _bigger(self.ws, cap, n)
        self.path, self.type = _bigger(self.path, cap, n), _bigger(self.type, cap, n)

    def remove(self, ids: Sequence[int]) -> None:
        for cid in ids:
            row = self.rows.pop(int(cid), None)
            if row is not None:
                self.alive[row] = False
                self.dead += 1
        if self.dead > 1024 and self.dead * 4 > self.size:
            self._compact()

    def _compact(self) -> None:
        """Drop tombstoned rows (overwrites would otherwise grow the matrix forever)."""
        keep = np.flatnonzero(self.alive[: self.size])
        vecs, ids = self.f32[keep], self.ids[keep]
        metas = [
            (self._ws.strings[w], self._paths.strings[p], self._types.strings[t])
            for w, p, t in zip(self.ws[keep], self.path[keep], self.type[keep], strict=True)
        ]
        self._reset()
        if len(keep):
            self.add([int(i) for i in ids], vecs, metas)

    # --------------------------------------------------------------- search

    def mask(
        self,
        ws: str,
        *,
        folder: str = "",
        types: Sequence[str] = (),
        allowed: Sequence[str] = (),
    ) -> NDArray[np.bool_]:
        """Live rows of workspace ``ws`` inside ``folder`` (and inside one of
        ``allowed``, a token's folders, when given) whose type starts with one of
        ``types`` (any type when empty)."""
        n = self.size
        code = self._ws.codes.get(ws)
        if code is None:
            return np.zeros(n, bool)
        keep: NDArray[np.bool_] = self.alive[:n] & (self.ws[:n] == code)
        if folder:
            keep &= self._paths.lut(("in", folder), lambda p: in_folder(p, folder))[self.path[:n]]
        if allowed:
            folders = tuple(allowed)
            lut = self._paths.lut(("any", folders), lambda p: any(in_folder(p, f) for f in folders))
            keep &= lut[self.path[:n]]
        if types:
            prefixes = tuple(types)
            keep &= self._types.lut(("type", prefixes), lambda t: t.startswith(prefixes))[
                self.type[:n]
            ]
        return keep

    def top(
        self,
        query: F32,
        k: int,
        *,
        ws: str,
        folder: str = "",
        types: Sequence[str] = (),
        allowed: Sequence[str] = (),
        exact: bool = False,
    ) -> list[int]:
        """Chunk ids of the ``k`` rows most similar to ``query`` that pass the filters.

        ``exact=True`` (or the ``exact`` kernel) skips the int8 pass: every
        candidate is scored in float32. Tests and the benchmark compare the two.
        """
        if self.size == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(self.dim)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        keep = self.mask(ws, folder=folder, types=types, allowed=allowed)
        count = int(np.count_nonzero(keep))
        if count == 0:
            return []
        n = self.size
        if count <= max(_EXACT_BELOW, 4 * k):
            rows = np.flatnonzero(keep)
            scores = self.f32[rows] @ q
        elif exact or self.kernel == "exact":
            rows = np.arange(n)
            scores = self.f32[:n] @ q
            scores[~keep] = -np.inf
        else:
            approx = self._first_pass(q)
            approx[~keep] = -np.inf
            rows = best_rows(approx, min(count, max(RESCORE, 4 * k)))
            scores = self.f32[rows] @ q
        picked = rows[best_rows(scores, min(k, count), self.ids[rows])]
        return [int(i) for i in self.ids[picked]]

    def _first_pass(self, q: F32) -> F32:
        """Approximate scores of every row (``scale * int8 . int8(query)``)."""
        n = self.size
        q8, _ = quantize(q[None, :])
        if self._simsimd is not None:
            out = np.empty((1, n), np.float32)
            self._simsimd.cdist(q8, self.i8[:n], metric="dot", out=out)
            approx: F32 = out[0]
        else:
            approx = np.empty(n, np.float32)
            qf = q8[0].astype(np.float32)
            block = np.empty((_BLOCK, self.dim), np.float32)
            for s in range(0, n, _BLOCK):
                e = min(n, s + _BLOCK)
                np.copyto(block[: e - s], self.i8[s:e], casting="unsafe")
                np.matmul(block[: e - s], qf, out=approx[s:e])
        approx *= self.scale[:n]
        return approx
