"""Offline sentiment analysis: a lexicon with negation, intensifiers and contrast.

The scoring is VADER's (Hutto & Gilbert, 2014), through the ``vaderSentiment``
package, which ships its lexicon inside the wheel: nothing is downloaded at run
time and no model is loaded, so an analysis takes microseconds and is the same on
every machine. VADER handles what a plain word count gets wrong -- "not good"
(negation), "VERY bad!!" (intensifiers, capitals, punctuation), "ok, but awful"
(a contrastive "but" weighting the second clause) and emoticons.

:func:`analyze` is the plain Python API (the event hive calls it directly);
:func:`create_service` wraps it as an MCP tool service.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from microhive.errors import InvalidInput, MissingDependency

if TYPE_CHECKING:
    from microhive.mcp.server import ToolService
    from microhive.service import Service, ServiceContext

__all__ = [
    "MAX_TEXT_CHARS",
    "NEGATIVE_THRESHOLD",
    "POSITIVE_THRESHOLD",
    "SentenceSentiment",
    "SentimentResult",
    "analyze",
    "build_service",
    "create_service",
]

#: VADER's recommended cut-offs on the compound score.
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05
#: Longer input is refused: the analyser is for messages and documents, not corpora.
MAX_TEXT_CHARS = 200_000

Label = Literal["positive", "negative", "neutral"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)|\n{2,}")


class SentenceSentiment(BaseModel):
    """The score of one sentence of the analysed text."""

    model_config = ConfigDict(frozen=True)

    text: str
    label: Label
    score: float


class SentimentResult(BaseModel):
    """The sentiment of a text.

    ``score`` is the compound polarity in [-1, 1]; ``positive``, ``negative`` and
    ``neutral`` are the proportions of the text in each class (they sum to ~1).
    For multi-sentence text the score is the mean of the sentence scores, so one
    angry sentence in a long happy review does not flip the whole document.
    """

    model_config = ConfigDict(frozen=True)

    label: Label
    score: float
    positive: float
    negative: float
    neutral: float
    sentences: tuple[SentenceSentiment, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (as put in events and tool results)."""
        return self.model_dump(mode="json")


@functools.cache
def _analyzer() -> Any:
    """The VADER analyser; reading its lexicon takes ~50 ms, so it is built once."""
    try:
        module = importlib.import_module("vaderSentiment.vaderSentiment")
    except ImportError:
        raise MissingDependency("vaderSentiment", "tools", "sentiment analysis") from None
    return module.SentimentIntensityAnalyzer()


def _label(score: float) -> Label:
    if score >= POSITIVE_THRESHOLD:
        return "positive"
    if score <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


def _split_sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part and part.strip()]


def analyze(text: str) -> SentimentResult:
    """Score the sentiment of ``text`` (English), offline and deterministically.

    Raises :class:`InvalidInput` for non-string or over-long input. Empty text is
    neutral with a score of 0.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"sentiment: text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(
            f"sentiment: text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
        )
    sentences = _split_sentences(text)
    if not sentences:
        return SentimentResult(label="neutral", score=0.0, positive=0.0, negative=0.0, neutral=1.0)
    analyzer = _analyzer()
    scored: list[tuple[str, dict[str, float]]] = [
        (sentence, analyzer.polarity_scores(sentence)) for sentence in sentences
    ]
    n = len(scored)
    score = sum(s["compound"] for _, s in scored) / n
    result = SentimentResult(
        label=_label(score),
        score=round(score, 4),
        positive=round(sum(s["pos"] for _, s in scored) / n, 4),
        negative=round(sum(s["neg"] for _, s in scored) / n, 4),
        neutral=round(sum(s["neu"] for _, s in scored) / n, 4),
        sentences=tuple(
            SentenceSentiment(
                text=sentence, label=_label(s["compound"]), score=round(s["compound"], 4)
            )
            for sentence, s in scored
        )
        if n > 1
        else (),
    )
    return result


# ------------------------------------------------------------------ tool service

_analyze = analyze  # the plain function, as seen from inside the tool of the same name


def build_service(name: str = "sentiment") -> ToolService:
    """The sentiment analyser as an MCP tool service (tool ``analyze``)."""
    from microhive.mcp.server import ToolService

    svc = ToolService(name, description="Offline sentiment analysis (VADER lexicon).")

    @svc.tool(read_only=True, idempotent=True, open_world=False, structured_output=True)
    def analyze(text: str) -> SentimentResult:
        """Score the sentiment of an English text, offline.

        Returns the label (positive, negative or neutral), the compound score in
        [-1, 1], the positive/negative/neutral proportions and, for several
        sentences, the score of each.

        Args:
            text: the text to analyse (at most 200,000 characters)
        """
        return _analyze(text)

    return svc


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``sentiment``."""
    from microhive.mcp.services import mesh_service

    _analyzer()  # load the lexicon now, so a missing package fails the start, not a call
    return mesh_service(build_service(ctx.name), ctx)
