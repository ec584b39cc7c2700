"""The offline planner: a goal and the available roles in, a plan (a DAG) out.

The plan has the seed's shape::

    outline -> research-<a> | research-<b> | ... -> summarize -> write

one research task per sub-topic named in the goal ("... about solar power:
costs, storage and grid integration" gives three), or three standard facets of
the topic when the goal names none. Roles are matched to the steps by name
(``research*``, ``summar*``, ``writ*``, ``outlin*``) with fall-backs, so any set
of roles yields a plan that uses only those roles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from microhive.errors import InvalidInput

__all__ = ["make_plan", "split_goal"]

MAX_RESEARCH = 5

_FILE = re.compile(r"[\w./-]+\.(?:pdf|md|txt|json|csv|html?)\b", re.IGNORECASE)
_ABOUT = re.compile(
    r"\b(?:brief|report|summary|overview|article|memo|note|essay|paper|document)s?\s+"
    r"(?:about|on|regarding|of|covering|for)\s+(.+)$",
    re.IGNORECASE | re.DOTALL,
)
_VERB = re.compile(
    r"^(?:please\s+)?(?:research|investigate|study|explain|describe|summari[sz]e|analy[sz]e|"
    r"explore|review)\s+(?:and\s+\w+\s+)?(?:about\s+|on\s+)?(.+)$",
    re.IGNORECASE | re.DOTALL,
)
_ASPECTS = re.compile(
    r"^(.*?)[\s,]+(?:covering|including|focusing on|with a focus on|especially|such as|"
    r"in terms of|with emphasis on)\s+(.+)$",
    re.IGNORECASE | re.DOTALL,
)
_LIST_SPLIT = re.compile(r"\s*(?:,|;|\band\b|&|\bas well as\b)\s*", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:the|a|an|its|their)\s+", re.IGNORECASE)
_FACETS = ("background and key facts", "current developments", "challenges and outlook")


def _clean(text: str) -> str:
    text = _FILE.sub("", text)
    text = re.sub(r"\s*\((?:see|using|from)[^)]*\)", "", text)
    text = re.sub(
        r"\b(?:using|from|based on)\s+(?:the\s+)?(?:documents?|files?|sources?)\b.*$",
        "",
        text,
        flags=re.IGNORECASE,
    )
    text = re.sub(r"(?:\s+(?:using|from|in|with|based on|see))+\s*$", "", text.strip(" .,:;"))
    return " ".join(text.split()).strip(" .,:;-\"'`")


def split_goal(goal: str) -> tuple[str, list[str]]:
    """The goal's main topic and its sub-topics (empty when the goal names none)."""
    text = " ".join(goal.split()).strip().rstrip(".!?")
    about = _ABOUT.search(text) or _VERB.match(text)
    topic = about.group(1) if about else text
    main, aspects_text = topic, ""
    if ":" in topic:
        main, aspects_text = topic.split(":", 1)
    elif found := _ASPECTS.match(topic):
        main, aspects_text = found.group(1), found.group(2)
    elif " - " in topic or " — " in topic:
        main, aspects_text = re.split(r" - | — ", topic, maxsplit=1)
    main = _ARTICLE.sub("", _clean(main)) or _clean(text) or "the topic"
    aspects: list[str] = []
    for part in _LIST_SPLIT.split(_clean(aspects_text)):
        part = _ARTICLE.sub("", part.strip(" .,:;"))
        if part and part.lower() not in (a.lower() for a in aspects):
            aspects.append(part)
    return main, aspects[:MAX_RESEARCH]


def _slug(text: str, taken: set[str]) -> str:
    base = "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:32].strip("-") or "topic"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def _pick(roles: Mapping[str, str], stems: tuple[str, ...], *fallbacks: str | None) -> str:
    """The first role whose name contains a stem; else its description; else a fall-back."""
    workers = [r for r in roles if r != "planner"] or list(roles)
    for stem in stems:
        for name in workers:
            if stem in name:
                return name
    for stem in stems:
        for name in workers:
            if stem in roles[name].lower():
                return name
    for fallback in fallbacks:
        if fallback:
            return fallback
    return workers[0]


def make_plan(goal: str, roles: Mapping[str, str]) -> dict[str, Any]:
    """A plan for ``goal`` as a JSON-ready dict (see the module docstring for its shape)."""
    if not goal.strip():
        raise InvalidInput("the goal must not be empty")
    if not roles:
        raise InvalidInput("no roles to plan with: the planning prompt lists none")
    main, aspects = split_goal(goal)
    named_files = sorted(set(_FILE.findall(goal)))
    if not aspects:
        aspects = [f"{main}: {facet}" for facet in _FACETS]
        queries = [main] * len(aspects)
    else:
        queries = [f"{main} {a}" for a in aspects]
    research = _pick(roles, ("research", "search", "gather"))
    summarize = _pick(roles, ("summar", "condens", "digest"), None)
    write = _pick(roles, ("writ", "author", "draft", "report"), summarize, research)
    if not any(s in summarize for s in ("summar", "condens", "digest")):
        summarize = write
    outline = _pick(roles, ("outlin",), write)
    taken: set[str] = {"outline", "summarize", "write"}
    tasks: list[dict[str, Any]] = [
        {
            "id": "outline",
            "role": outline,
            "instruction": (
                f"Outline a brief about {main} with one section per sub-topic "
                f"({'; '.join(aspects)}) and save the outline to outline.md."
            ),
            "inputs": {"topic": main, "sections": aspects, "save_to": "outline.md"},
            "depends_on": [],
        }
    ]
    research_ids: list[str] = []
    research_files: list[str] = []
    for aspect, query in zip(aspects, queries, strict=True):
        slug = _slug(aspect.split(": ")[-1], taken)
        task_id, save_to = f"research-{slug}", f"research/{slug}.json"
        inputs: dict[str, Any] = {
            "topic": main,
            "subtopic": aspect,
            "query": query,
            "save_to": save_to,
        }
        pdf_note = ""
        if named_files:
            inputs["read"] = named_files
            pdf_note = f" Also read {', '.join(named_files)}."
        tasks.append(
            {
                "id": task_id,
                "role": research,
                "instruction": (
                    f"Research '{aspect}' for a brief about {main}: search the workspace for "
                    f"'{query}'.{pdf_note} Keep the relevant facts with their sources and "
                    f"save them as findings to {save_to}."
                ),
                "inputs": inputs,
                "depends_on": ["outline"],
            }
        )
        research_ids.append(task_id)
        research_files.append(save_to)
    tasks.append(
        {
            "id": "summarize",
            "role": summarize,
            "instruction": (
                f"Merge the research findings about {main} into the most important facts, "
                "keeping the source of each, and save them to findings.json."
            ),
            "inputs": {"topic": main, "read": research_files, "save_to": "findings.json"},
            "depends_on": research_ids,
        }
    )
    tasks.append(
        {
            "id": "write",
            "role": write,
            "instruction": (
                f"Write the brief about {main}: read findings.json and outline.md and write a "
                "Markdown report with headings, citing the source files, to report.md."
            ),
            "inputs": {
                "topic": main,
                "sections": aspects,
                "read": ["findings.json", "outline.md"],
                "save_to": "report.md",
            },
            "depends_on": ["outline", "summarize"],
        }
    )
    return {"goal": goal.strip(), "offline": True, "tasks": tasks}
