"""What the offline model writes: Markdown briefs, findings JSON and outlines.

Every sentence of a brief is quoted from a source and cites its file name in
brackets (``... storage costs fell. [solar.md]``); every document carries the
visible :data:`OFFLINE_NOTE` so no reader mistakes it for a language model's
prose. Tool results are read back into :class:`Source` s by :func:`sources_from`,
which understands plain text, our findings JSON and the usual JSON shapes of
search/read/extract results (objects with a path-like and a text-like field).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from microhive.models.offline.text import (
    Sentence,
    Source,
    rank_sentences,
    split_sentences,
    terms,
)

__all__ = [
    "OFFLINE_NOTE",
    "Brief",
    "compose_brief",
    "findings_document",
    "outline_document",
    "sources_from",
]

OFFLINE_NOTE = "_(offline model)_"

_NAME_KEYS = ("path", "file", "filename", "source", "name", "uri", "url", "title")
_TEXT_KEYS = ("content", "text", "snippet", "body", "markdown", "page_content", "summary")


@dataclass(frozen=True, slots=True)
class Brief:
    """A composed brief: its Markdown, and the picked sentences with their scores."""

    markdown: str
    picks: tuple[tuple[Sentence, float], ...]

    @property
    def sources(self) -> list[str]:
        return sorted({s.source for s, _ in self.picks})


def _cite(s: Sentence) -> str:
    text = s.text if s.text[-1] in ".!?" else s.text + "."
    return f"{text} [{s.source}]"


def compose_brief(
    topic: str,
    sources: Sequence[Source],
    *,
    query: Iterable[str] = (),
    sections: Sequence[str] = (),
    limit: int = 9,
) -> Brief:
    """An extractive Markdown brief on ``topic`` from ``sources``, with citations."""
    title = topic[:1].upper() + topic[1:]
    head = [f"# Brief: {title}", ""]
    sentences = [s for src in sources for s in split_sentences(src)]
    picks = rank_sentences(sentences, list(query) + terms(topic), limit)
    if not picks:
        names = ", ".join(f"`{s.name}`" for s in sources) or "none"
        body = (
            f"{OFFLINE_NOTE} No usable source text was found for this topic "
            f"(sources read: {names}), so there is nothing to quote yet."
        )
        return Brief("\n".join([*head, body, ""]), ())
    used = sorted({s.source for s, _ in picks})
    lines = [
        *head,
        f"{OFFLINE_NOTE} An extractive brief: every sentence below is quoted from the "
        f"sources and cites the file it came from ({len(used)} source"
        f"{'s' if len(used) != 1 else ''}).",
        "",
        "## Summary",
        "",
        " ".join(_cite(s) for s, _ in picks[:3]),
        "",
    ]
    rest = [s for s, _ in picks[3:]]
    groups: dict[str, list[Sentence]] = {}
    if sections:
        wanted = [(name, set(terms(name))) for name in sections]
        for s in rest:
            words = set(terms(s.text))
            best = max(wanted, key=lambda item: len(item[1] & words))
            key = best[0] if best[1] & words else "Further points"
            groups.setdefault(key, []).append(s)
        order = [*sections, "Further points"]
    else:
        for s in rest:
            groups.setdefault(f"From {s.source}", []).append(s)
        order = sorted(groups)
    for name in order:
        if groups.get(name):
            heading = name.split(": ")[-1]
            lines += [f"## {heading[:1].upper() + heading[1:]}", ""]
            lines += [f"- {_cite(s)}" for s in groups[name]]
            lines.append("")
    counts = {name: sum(1 for s, _ in picks if s.source == name) for name in used}
    lines += ["## Sources", ""]
    lines += [
        f"- `{name}` ({n} sentence{'s' if n != 1 else ''} quoted)" for name, n in counts.items()
    ]
    return Brief("\n".join(lines) + "\n", tuple(picks))


def findings_document(topic: str, brief: Brief, sources: Sequence[Source]) -> str:
    """The findings JSON a researcher saves: the picked sentences with their sources."""
    data = {
        "topic": topic,
        "offline": True,
        "note": "extractive findings by the offline model; sentences are quoted from sources",
        "findings": [
            {"text": s.text, "source": s.source, "score": score} for s, score in brief.picks
        ],
        "sources": sorted({s.name for s in sources}),
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def outline_document(topic: str, sections: Sequence[str]) -> str:
    """A Markdown outline: one numbered section per sub-topic."""
    lines = [f"# Outline: {topic}", "", f"{OFFLINE_NOTE} One section per sub-topic.", ""]
    for i, name in enumerate(sections or ["Background", "Key facts", "Outlook"], 1):
        lines.append(f"{i}. {name.split(': ')[-1]}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- reading back


def sources_from(content: str, default_name: str) -> list[Source]:
    """The documents inside one tool result or message (JSON walked, else plain text)."""
    stripped = content.strip()
    if stripped[:1] in "[{":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            pass
        else:
            found: list[Source] = []
            _walk(data, default_name, found)
            return _merge(found)
    return [Source(default_name, content)] if stripped else []


def _walk(data: Any, name: str, out: list[Source]) -> None:
    if isinstance(data, list):
        for item in data:
            _walk(item, name, out)
        return
    if not isinstance(data, dict):
        if isinstance(data, str) and len(data.split()) > 5:
            out.append(Source(name, data))
        return
    if isinstance(data.get("findings"), list):
        for item in data["findings"]:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(Source(str(item.get("source") or name), str(item["text"])))
        return
    own = next((str(data[k]) for k in _NAME_KEYS if isinstance(data.get(k), str)), name)
    text_key = next((k for k in _TEXT_KEYS if isinstance(data.get(k), str)), None)
    if text_key is not None:  # the text may itself be JSON (a findings file read back)
        out.extend(sources_from(str(data[text_key]), own))
    for key, value in data.items():
        if key != text_key and isinstance(value, list | dict):
            _walk(value, own, out)


def _merge(found: list[Source]) -> list[Source]:
    """One source per name, texts joined as paragraphs, in first-seen order."""
    merged: dict[str, list[str]] = {}
    for src in found:
        merged.setdefault(src.name, []).append(src.text)
    return [Source(name, "\n\n".join(texts)) for name, texts in merged.items()]
