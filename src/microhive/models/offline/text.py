"""Text analysis for the offline model: sentences, key terms and extractive ranking.

Everything here is plain Python and deterministic (ties break by source and
position), so the offline model gives the same output for the same input.

Ranking is centroid TF-IDF with query relevance and a redundancy penalty: each
sentence is a TF-IDF vector over the sentences of all sources; a sentence scores
for being close to the centroid (it says what the sources say most), for
containing the query terms (it is on topic), and a little for coming early in its
document (leads carry the point). Selection is maximal marginal relevance: the
next pick is the best score minus its similarity to what was already picked, and
near-duplicates are skipped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "STOPWORDS",
    "Sentence",
    "Source",
    "key_terms",
    "rank_sentences",
    "split_sentences",
    "terms",
]

_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    either few for from further had has have having he her here hers him his how i if in
    into is it its itself just more most much must my no nor not now of off on once only
    or other our ours out over own same she should so some such than that the their
    theirs them then there these they this those through to too under until up upon us
    very was we were what when where which while who whom why will with within without
    would you your yours may might shall one two three many several via per using used
    use uses however thus therefore e g eg ie etc
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

#: Words that describe the job rather than the topic ("research and write a brief about X").
_TASK_WORDS_TEXT = """
    research researching write writing draft brief report summary summarise summarize
    outline document documents find gather collect save store read create produce make
    prepare short long detailed overview please task goal topic topics subtopic file
    files workspace search extract based information notes note findings
"""
TASK_WORDS = frozenset(_TASK_WORDS_TEXT.split())

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]*|\d+(?:[.,]\d+)*%?")
_SENT_END = re.compile(
    r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(]|\[(?![^\[\]\s]+\.[A-Za-z0-9]{1,5}\]))"
)
_CITATION = re.compile(r"\s*\[([^\[\]\s]+\.[A-Za-z0-9]{1,5})\]\s*$")
_CITED_END = re.compile(r"(\[[^\[\]\s]+\.[A-Za-z0-9]{1,5}\])\s+")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_MIN_WORDS, _MAX_WORDS = 6, 70


@dataclass(frozen=True, slots=True)
class Source:
    """A document the model read: its name (a file path) and its text."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence of a source, with where it came from."""

    text: str
    source: str
    position: int  # index within its source
    total: int  # sentences in its source


def _stem(word: str) -> str:
    """A light suffix strip so 'batteries'/'battery' and 'costs'/'cost' meet."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def terms(text: str, *, drop: frozenset[str] = STOPWORDS) -> list[str]:
    """Content terms of ``text``: lower-cased, stop words removed, lightly stemmed."""
    out = []
    for w in _WORD.findall(text):
        low = w.lower().strip("'-")
        if len(low) > 1 and low not in drop:
            out.append(_stem(low))
    return out


def key_terms(text: str, limit: int = 8) -> list[str]:
    """The topic words of a task, in order of first appearance (task words dropped)."""
    seen: list[str] = []
    for w in _WORD.findall(text):
        low = w.lower().strip("'-")
        if len(low) < 3 or low in STOPWORDS or low in TASK_WORDS or low.isdigit():
            continue
        if "." in w or low.endswith(("json", "pdf")):
            continue
        if low not in seen:
            seen.append(low)
        if len(seen) >= limit:
            break
    return seen


def split_sentences(source: Source) -> list[Sentence]:
    """Split a document into sentences, skipping headings, code and fragments.

    A trailing ``[name.ext]`` citation (as in our own briefs) sets the sentence's
    source, so re-summarising a brief keeps the original citations.
    """
    raw: list[str] = []
    in_code = False
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            joined = _CITED_END.sub(r"\1\n", " ".join(paragraph))
            for chunk in joined.split("\n"):
                raw.extend(_SENT_END.split(chunk))
            paragraph.clear()

    for line in source.text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            flush()
            continue
        if in_code or not stripped or stripped.startswith(("#", "|", ">", "_(")):
            flush()
            continue
        if _BULLET.match(stripped):
            flush()
            paragraph.append(_BULLET.sub("", stripped))
            flush()
            continue
        paragraph.append(stripped)
    flush()
    kept: list[tuple[str, str]] = []
    for text in raw:
        text = text.strip()
        name = source.name
        cited = _CITATION.search(text)
        if cited:
            name = cited.group(1)
            text = text[: cited.start()].strip()
        words = len(_WORD.findall(text))
        if _MIN_WORDS <= words <= _MAX_WORDS and text[0].isalnum():
            kept.append((text, name))
    return [Sentence(t, n, i, len(kept)) for i, (t, n) in enumerate(kept)]


def _vector(words: Sequence[str], idf: dict[str, float]) -> dict[str, float]:
    counts = Counter(words)
    vec = {w: c * idf[w] for w, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
    return {w: v / norm for w, v in vec.items()}


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(w, 0.0) for w, v in a.items())


def rank_sentences(
    sentences: Sequence[Sentence],
    query: Iterable[str] = (),
    limit: int = 8,
    *,
    redundancy: float = 0.6,
) -> list[tuple[Sentence, float]]:
    """Pick up to ``limit`` informative, on-topic, non-redundant sentences, best first."""
    if not sentences:
        return []
    bags = [terms(s.text) for s in sentences]
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(set(bag))
    n = len(sentences)
    idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
    vectors = [_vector(bag, idf) for bag in bags]
    centroid: dict[str, float] = {}
    for vec in vectors:
        for w, v in vec.items():
            centroid[w] = centroid.get(w, 0.0) + v
    norm = math.sqrt(sum(v * v for v in centroid.values())) or 1.0
    centroid = {w: v / norm for w, v in centroid.items()}
    wanted = {_stem(q.lower()) for q in query} - STOPWORDS
    weight = sum(idf.get(q, 1.0) for q in wanted) or 1.0
    scores = []
    for s, bag, vec in zip(sentences, bags, vectors, strict=True):
        present = set(bag)
        relevance = sum(idf.get(q, 1.0) for q in wanted if q in present) / weight
        lead = 1.0 - s.position / max(s.total, 1)
        scores.append(0.5 * _cosine(vec, centroid) + 0.4 * relevance + 0.1 * lead)
    chosen: list[int] = []
    candidates = sorted(range(n), key=lambda i: (-scores[i], sentences[i].source, i))
    while candidates and len(chosen) < limit:
        best, best_value = -1, -math.inf
        for i in candidates:
            overlap = max((_cosine(vectors[i], vectors[j]) for j in chosen), default=0.0)
            if overlap > redundancy:
                continue
            value = scores[i] - 0.3 * overlap
            if value > best_value:
                best, best_value = i, value
        if best < 0:
            break
        chosen.append(best)
        candidates.remove(best)
    return [(sentences[i], round(scores[i], 4)) for i in chosen]
