"""A deterministic embedder built from feature hashing.

Words and character trigrams are hashed (blake2b, so the result is the same in
every process and on every machine) into a fixed number of signed buckets. Texts
that share words land near each other, which is enough to test indexing, fusion
and filtering quickly. It knows nothing about meaning: never the product default.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Feature-hashing embedder: fast, deterministic, no model files."""

    def __init__(self, dimension: int = 384) -> None:
        if dimension < 8 or dimension > 8192:
            raise ValueError("dimension must be between 8 and 8192")
        self.dimension = dimension
        self.name = f"hashing:{dimension}"

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = _WORD.findall(text.lower())
        feats: list[tuple[str, float]] = [(w, 1.0) for w in words]
        for w in words:
            padded = f"#{w}#"
            feats.extend((padded[i : i + 3], 0.3) for i in range(len(padded) - 2))
        return feats

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Hash each text into a unit vector (a zero text maps to a fixed unit vector)."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat, weight in self._features(text):
                digest = hashlib.blake2b(feat.encode("utf-8"), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                sign = 1.0 if value & 1 else -1.0
                out[row, (value >> 1) % self.dimension] += sign * weight
            norm = float(np.linalg.norm(out[row]))
            if norm == 0.0:
                out[row, 0] = 1.0
            else:
                out[row] /= norm
        return out
