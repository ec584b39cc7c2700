"""BM25 keyword scoring over tool names, descriptions and argument names.

Tool names and argument names are split on ``_``, ``-``, ``.`` and camelCase, so
``send_email`` and ``sendEmail`` both match "send an email". A light suffix
stemmer folds plurals and common verb forms ("meetings" -> "meet", "converted"
-> "convert") without a dictionary. The tool's name counts twice: a word in
the name says more about what a tool does than the same word in its description.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["BM25Index", "tokenize"]

_WORD = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_STOP = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "get",
        "give",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "please",
        "show",
        "so",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "this",
        "to",
        "up",
        "us",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    }
)
_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "es", "ed", "ly", "s")


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            if suffix in ("ies", "ied"):
                stem += "y"
            return stem
    return word


def tokenize(text: str) -> list[str]:
    """Lowercase stemmed words of ``text`` without stop words (identifiers are split)."""
    spaced = _CAMEL.sub(" ", text)
    words = (w.lower() for w in _WORD.findall(spaced))
    return [_stem(w) for w in words if w not in _STOP]


class BM25Index:
    """Okapi BM25 over a fixed list of documents (each a list of tokens)."""

    def __init__(
        self, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75
    ) -> None:
        self.k1 = k1
        self.b = b
        self._tf = [Counter(doc) for doc in documents]
        self._len = [len(doc) for doc in documents]
        self._avg = (sum(self._len) / len(self._len)) if self._len else 0.0
        df: Counter[str] = Counter()
        for tf in self._tf:
            df.update(tf.keys())
        n = len(documents)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, query: Iterable[str], among: Iterable[int] | None = None) -> dict[int, float]:
        """BM25 score of every document (or those ``among``) with at least one query term."""
        terms = set(query)
        out: dict[int, float] = {}
        for i in among if among is not None else range(len(self._tf)):
            tf = self._tf[i]
            norm = self.k1 * (1 - self.b + self.b * self._len[i] / (self._avg or 1.0))
            score = 0.0
            for term in terms:
                f = tf.get(term)
                if f:
                    score += self._idf[term] * f * (self.k1 + 1) / (f + norm)
            if score > 0:
                out[i] = score
        return out
