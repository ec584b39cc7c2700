"""The offline planner: a goal and the available roles in, a plan (a DAG) out.

The plan has the seed's shape::

    outline -> research-<a> | research-<b> | ... -> summarize -> write

one research task per sub-topic named in the goal ("... about solar power:
costs, storage and grid integration" gives three), or three standard facets of
the topic when the goal names none.

Every worker role in the prompt gets work (``planner`` plans; it works only when
it is the one role there is):

1. Each step takes the first role whose *name* contains one of its stems, else
   the first whose *description* has a word starting with one: research
   (``research``, ``search``, ``gather``, ``find`` -- not "findings"), summarize
   (``summar``, ``condens``, ``merg``, ``digest``), write (``writ``, ``draft``,
   ``author``, ``report``), outline (``outlin``, ``plan``, ``structur``). Earlier
   stems win over later ones, then the order the roles are listed in.
2. A step no role matches falls back: research to the first role, write to the
   summarize role or else the research role, summarize and outline to the
   write role.
3. Each role left over gets a step of its own between summarize and write --
   "<description> for the brief about <topic>: read findings.json, save your
   result to <role>.md" -- which the write step then depends on and reads.

So any set of roles yields a plan that uses only those roles, and all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from microhive.errors import InvalidInput

__all__ = ["make_plan", "split_goal"]

MAX_RESEARCH = 5
MAX_TASKS = 64  # what the orchestrator accepts (microhive.orchestrator.plan)

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


def _listing(items: list[str]) -> str:
    """``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _slug(text: str, taken: set[str]) -> str:
    base = "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:32].strip("-") or "topic"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


# The standard steps and their stems (see the module docstring), in the order the
# steps are matched. A stem is a regular expression: "find" but not "findings".
_STEPS: dict[str, tuple[str, ...]] = {
    "research": ("research", "search", "gather", r"find(?!ings?\b)"),
    "summarize": ("summar", "condens", "merg", "digest"),
    "write": ("writ", "draft", "author", "report"),
    "outline": ("outlin", "plan", "structur"),
}
_BY_NAME = {step: [re.compile(stem) for stem in stems] for step, stems in _STEPS.items()}
_BY_WORD = {step: [re.compile(rf"\b{stem}") for stem in stems] for step, stems in _STEPS.items()}


def _match(roles: Mapping[str, str], workers: list[str], step: str) -> str | None:
    """The role for a standard step: by name, else by a word of its description."""
    for stem in _BY_NAME[step]:
        for name in workers:
            if stem.search(name.lower()):
                return name
    for stem in _BY_WORD[step]:
        for name in workers:
            if stem.search(roles[name].lower()):
                return name
    return None


def _own_step(role: str, description: str, main: str, slug: str) -> dict[str, Any]:
    """The step of a role no standard step took: its description, on the findings."""
    what = " ".join(description.split()).strip(" .;:")
    if not what or what.lower() == role.lower():
        what = f"do the work of the {role}"
    save_to = f"{slug}.md"
    return {
        "id": slug,
        "role": role,
        "instruction": (
            f"{what[0].upper()}{what[1:]} for the brief about {main}: read findings.json, "
            f"save your result to {save_to}."
        ),
        "inputs": {"topic": main, "read": ["findings.json"], "save_to": save_to},
        "depends_on": ["summarize"],
    }


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
    workers = [r for r in roles if r != "planner"] or list(roles)
    research = _match(roles, workers, "research") or workers[0]
    summarize = _match(roles, workers, "summarize")
    write = _match(roles, workers, "write") or summarize or research
    summarize = summarize or write
    outline = _match(roles, workers, "outline") or write
    assigned = {research, summarize, write, outline}
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
    # Every other role gets its own step, within the plan's size limit.
    room = MAX_TASKS - len(tasks) - 1
    own = [
        _own_step(role, roles[role], main, _slug(role, taken))
        for role in [r for r in workers if r not in assigned][: max(room, 0)]
    ]
    tasks.extend(own)
    reads = ["findings.json", "outline.md", *(t["inputs"]["save_to"] for t in own)]
    tasks.append(
        {
            "id": "write",
            "role": write,
            "instruction": (
                f"Write the brief about {main}: read {_listing(reads)} and write a "
                "Markdown report with headings, citing the source files, to report.md."
            ),
            "inputs": {
                "topic": main,
                "sections": aspects,
                "read": reads,
                "save_to": "report.md",
            },
            "depends_on": ["outline", "summarize", *(t["id"] for t in own)],
        }
    )
    return {"goal": goal.strip(), "offline": True, "tasks": tasks}
