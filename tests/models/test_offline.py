"""The offline model does real, deterministic work: plans, tool use and briefs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest

from microhive.models import (
    OFFLINE_NOTE,
    Message,
    SystemMessage,
    ToolSpec,
    UserMessage,
    count_tokens,
    extract_json,
    open_model,
    planning_messages,
    task_messages,
)
from microhive.models.offline import OfflineModel
from microhive.models.offline.planner import make_plan, split_goal
from microhive.models.offline.text import Source, split_sentences
from microhive.orchestrator.plan import parse_plan

from .harness import CORPUS, TOOLS, Workspace, run_agent

ROLES = {
    "planner": "turns a goal into a plan",
    "researcher": "searches the workspace, extracts PDFs and saves findings",
    "summarizer": "merges findings",
    "writer": "writes the report",
}


def check_dag(plan: Mapping[str, Any], roles: Mapping[str, str]) -> dict[str, list[str]]:
    """Assert the plan is a valid DAG over known roles; return id -> depends_on."""
    tasks = plan["tasks"]
    ids = [t["id"] for t in tasks]
    assert len(ids) == len(set(ids)), ids
    graph = {t["id"]: list(t["depends_on"]) for t in tasks}
    for t in tasks:
        assert t["role"] in roles, t
        assert t["role"] != "planner" or list(roles) == ["planner"]
        assert t["instruction"].strip()
        assert isinstance(t["inputs"], dict)
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", t["id"])
        assert set(t["depends_on"]) <= set(ids)
    done: set[str] = set()
    while len(done) < len(graph):  # Kahn's algorithm: no progress means a cycle
        ready = [i for i, deps in graph.items() if i not in done and set(deps) <= done]
        assert ready, f"cycle among {set(graph) - done}"
        done.update(ready)
    return graph


GOALS = [
    (
        "Research and write a brief about solar power: costs, storage and grid integration",
        ["costs", "storage", "grid integration"],
    ),
    (
        "Write a report on coffee cultivation covering climate, pests, and prices.",
        ["climate", "pests", "prices"],
    ),
    ("Investigate urban heat islands - causes, health effects; mitigation", None),
    ("research and write a brief about renewable energy", None),
]


@pytest.mark.parametrize(("goal", "subtopics"), GOALS)
async def test_planner_gives_a_valid_dag_with_known_roles(
    goal: str, subtopics: list[str] | None
) -> None:
    async with OfflineModel() as model:
        first = await model.chat(planning_messages(goal, ROLES))
        again = await model.chat(planning_messages(goal, ROLES))
    assert first.text == again.text  # deterministic
    assert first.offline and first.provider == "offline" and first.finish_reason == "stop"
    plan = extract_json(first.text)
    assert plan["offline"] is True
    graph = check_dag(plan, ROLES)
    research = [t for t in plan["tasks"] if t["id"].startswith("research-")]
    assert all(t["role"] == "researcher" for t in research)
    assert all(graph[t["id"]] == ["outline"] for t in research)  # parallel with each other
    if subtopics:
        assert [t["inputs"]["subtopic"] for t in research] == subtopics
    else:
        assert len(research) == 3
    by_id = {t["id"]: t for t in plan["tasks"]}
    assert set(graph["summarize"]) == {t["id"] for t in research}
    assert by_id["summarize"]["role"] == "summarizer"
    assert by_id["write"]["role"] == "writer" and "summarize" in graph["write"]
    assert by_id["write"]["inputs"]["save_to"] == "report.md"
    assert first.usage.input_tokens > 0 and first.usage.output_tokens == count_tokens(first.text)


@pytest.mark.parametrize(
    "roles",
    [
        {"researcher": "finds things", "writer": "writes"},
        {"analyst": "does everything"},
        {"web-researcher": "reads the web", "editor": "condenses and summarizes texts"},
    ],
)
async def test_planner_uses_only_the_roles_it_was_given(roles: dict[str, str]) -> None:
    async with OfflineModel() as model:
        result = await model.chat(
            planning_messages("a brief about tides: causes and energy", roles)
        )
    check_dag(extract_json(result.text), roles)


CUSTOM_ROLES = {
    **ROLES,
    "fact-checker": "checks every claim in the findings against its source",
    "translator": "translates the key facts into French",
}


@pytest.mark.parametrize(
    "roles",
    [
        CUSTOM_ROLES,
        {"researcher": "finds material", "translator": "translator"},  # no description
        {"fact-checker": "checks claims", "writer": "writes", "editor": "improves style"},
    ],
)
async def test_planner_gives_every_worker_role_work(roles: dict[str, str]) -> None:
    async with OfflineModel() as model:
        first = await model.chat(planning_messages("a brief about bees: pollination", roles))
        again = await model.chat(planning_messages("a brief about bees: pollination", roles))
    assert first.text == again.text  # deterministic
    plan = extract_json(first.text)
    workers = [r for r in roles if r != "planner"]
    graph = check_dag(plan, roles)
    parse_plan(plan, roles=workers)  # what the orchestrator accepts
    assert {t["role"] for t in plan["tasks"]} == set(workers)
    by_id = {t["id"]: t for t in plan["tasks"]}
    standard = {"outline", "summarize", "write"} | {i for i in by_id if i.startswith("research-")}
    own = [by_id[i] for i in by_id if i not in standard]
    for task in own:  # each left-over role: one step on the findings, read by the writer
        assert graph[task["id"]] == ["summarize"]
        assert task["inputs"]["read"] == ["findings.json"]
        assert task["inputs"]["save_to"] == f"{task['role']}.md"
        assert task["id"] in graph["write"]
        assert task["inputs"]["save_to"] in by_id["write"]["inputs"]["read"]
        assert task["inputs"]["save_to"] in by_id["write"]["instruction"]
    if roles is CUSTOM_ROLES:
        assert [t["role"] for t in own] == ["fact-checker", "translator"]
        assert by_id["fact-checker"]["instruction"] == (
            "Checks every claim in the findings against its source for the brief about bees: "
            "read findings.json, save your result to fact-checker.md."
        )
        # the default roles keep their steps
        assert by_id["summarize"]["role"] == "summarizer" and by_id["write"]["role"] == "writer"


def test_roles_match_steps_by_the_words_of_their_descriptions() -> None:
    roles = {
        "clerk": "reads the findings and files them",  # 'findings' is not 'find'
        "scout": "finds sources on the web",
        "editor": "merges notes into the key facts",
        "scribe": "drafts the final text",
        "architect": "plans the structure of the brief",
    }
    plan = make_plan("a brief about bees: pollination", roles)
    steps = {t["id"]: t["role"] for t in plan["tasks"]}
    assert steps == {
        "outline": "architect",
        "research-pollination": "scout",
        "summarize": "editor",
        "clerk": "clerk",
        "write": "scribe",
    }


async def test_the_offline_agents_do_the_work_of_every_role_in_the_plan() -> None:
    """Each sub-task of a plan with custom roles, run in order: every role writes its
    file, and the writer reads the custom roles' files before writing the report."""
    roles = {k: v for k, v in CUSTOM_ROLES.items() if k != "planner"}
    plan = make_plan("a brief about solar power: costs and storage", roles)
    ws = Workspace()
    project = "projects/run-1"
    order = parse_plan(plan, roles=roles).topological_order()
    by_id = {t["id"]: t for t in plan["tasks"]}
    for task_id in order:
        task = by_id[task_id]
        ws.log.clear()
        messages = task_messages(
            task["role"], task["instruction"], inputs=task["inputs"], project=project
        )
        await run_agent(OfflineModel(), messages, ws)
        assert f"{project}/{task['inputs']['save_to']}" in ws.files, task_id
    read = {str(c.arguments.get("path")) for c in ws.log if c.name == "workspace.read"}
    assert {f"{project}/fact-checker.md", f"{project}/translator.md"} <= read
    assert OFFLINE_NOTE in ws.files[f"{project}/fact-checker.md"]
    assert "## Sources" in ws.files[f"{project}/report.md"]


async def test_planner_keeps_the_goal_when_re_asked() -> None:
    messages = planning_messages("a brief about tides: causes and energy", ROLES)
    re_asked = [*messages, UserMessage("The plan was refused: unknown role 'x'. Try again.")]
    async with OfflineModel() as model:
        first, second = await model.chat(messages), await model.chat(re_asked)
    assert first.text == second.text


def test_goal_splitting_drops_file_names_and_lead_ins() -> None:
    assert split_goal("Summarize the history of the printing press using press.pdf") == (
        "history of the printing press",
        [],
    )
    assert split_goal("Write a brief on bees, including pollination and colony collapse") == (
        "bees",
        ["pollination", "colony collapse"],
    )


def test_sentences_skip_headings_and_fragments_and_keep_citations() -> None:
    text = "# Title\n\nShort line.\n- Bees pollinate a third of the crops we eat. [bees.md]\n"
    sentences = split_sentences(Source("notes.md", text))
    assert [(s.text, s.source) for s in sentences] == [
        ("Bees pollinate a third of the crops we eat.", "bees.md")
    ]
    para = (
        "Bees pollinate many of our crops today. [a.md] Wasps eat other insects in gardens. [b.md]"
    )
    assert [(s.text, s.source) for s in split_sentences(Source("brief.md", para))] == [
        ("Bees pollinate many of our crops today.", "a.md"),
        ("Wasps eat other insects in gardens.", "b.md"),
    ]


def _source_sentences() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in CORPUS.iterdir():
        for s in split_sentences(Source(path.name, path.read_text(encoding="utf-8"))):
            out.setdefault(path.name, set()).add(s.text)
    return out


async def test_summariser_quotes_and_cites_the_sources_labelled_offline() -> None:
    documents = {p.name: p.read_text(encoding="utf-8") for p in sorted(CORPUS.iterdir())}
    messages = task_messages(
        "summarizer",
        "Summarise what the documents say about solar power costs and storage.",
        inputs={"topic": "solar power"},
        documents=documents,
    )
    async with open_model() as model:
        result = await model.chat(messages)
    brief = result.text
    assert result.offline and OFFLINE_NOTE in brief and not result.tool_calls
    assert brief.startswith("# Brief: Solar power")
    assert "## Summary" in brief and "## Sources" in brief
    cited = re.findall(r"(?m)([A-Z][^\[\]\n]*?[.!?]) \[([\w.-]+)\]", brief)
    assert len(cited) >= 5
    known = _source_sentences()
    for sentence, source in cited:
        assert sentence in known[source], (sentence, source)  # quoted, and cited right
    assert {source for _, source in cited} == set(known)  # draws on every document
    assert "Short line" not in brief  # fragments are not "informative sentences"


async def test_summariser_without_sources_says_so() -> None:
    async with OfflineModel() as model:
        result = await model.chat([UserMessage("Summarise the documents about tides.")])
    assert OFFLINE_NOTE in result.text and "No usable source text" in result.text


async def test_researcher_searches_reads_and_saves_findings() -> None:
    plan = extract_json((await OfflineModel().chat(planning_messages(GOALS[0][0], ROLES))).text)
    task = next(t for t in plan["tasks"] if t["id"] == "research-storage")
    messages = task_messages(
        task["role"], task["instruction"], inputs=task["inputs"], project="projects/run-1"
    )
    ws = Workspace()
    final, steps = await run_agent(OfflineModel(), messages, ws)
    names = [[c.name for c in step.tool_calls] for step in steps]
    assert names[0] == ["workspace.search"]
    assert "storage" in ws.log[0].arguments["query"]
    assert set(names[1]) == {"workspace.read"}  # reads the files the search found
    assert names[2] == ["workspace.write"]
    saved = json.loads(ws.files["projects/run-1/research/storage.json"])
    assert saved["offline"] is True and saved["findings"]
    assert {f["source"] for f in saved["findings"]} <= set(ws.files)
    assert any("battery" in f["text"].lower() for f in saved["findings"][:3])
    assert final.offline and OFFLINE_NOTE in final.text
    assert "`projects/run-1/research/storage.json`" in final.text
    # the same conversation again gives the same calls (deterministic rules)
    ws2 = Workspace()
    await run_agent(OfflineModel(), messages, ws2)
    assert [c.to_dict() for c in ws2.log] == [c.to_dict() for c in ws.log]


async def test_writer_reads_findings_and_writes_a_cited_report() -> None:
    ws = Workspace()
    research = task_messages(
        "researcher",
        "Research solar power costs and save the findings to findings.json.",
        inputs={"topic": "solar power", "query": "solar power costs storage grid"},
    )
    await run_agent(OfflineModel(), research, ws)
    assert "findings.json" in ws.files
    ws.log.clear()
    writer = task_messages(
        "writer",
        "Write the brief about solar power: read findings.json and write it to report.md.",
        inputs={"topic": "solar power", "sections": ["costs", "storage", "grid integration"]},
    )
    final, _ = await run_agent(OfflineModel(), writer, ws)
    assert [c.name for c in ws.log] == ["workspace.read", "workspace.write"]
    assert ws.log[0].arguments == {"path": "findings.json"}
    report = ws.files["report.md"]
    assert OFFLINE_NOTE in report and "## Sources" in report
    assert re.search(r"\[docs/(solar-costs\.md|storage\.md|grid\.txt)\]", report)
    assert final.text.startswith(report.rstrip("\n")[:40])


async def test_pdf_named_in_the_task_is_extracted_first_and_failures_are_not_repeated() -> None:
    ws = Workspace(
        pdfs={
            "papers/tides.pdf": "Tidal power plants use the rise and fall of "
            "sea levels to turn turbines. The largest tidal plant is in South Korea."
        }
    )
    messages = task_messages(
        "researcher",
        "Research tidal energy. Read papers/tides.pdf and missing.pdf, save notes to tides.md.",
    )
    info = ToolSpec("pdf.pdf_info", "PDF metadata", dict(TOOLS[3].parameters))
    final, steps = await run_agent(OfflineModel(), messages, ws, tools=[info, *TOOLS])
    first = steps[0].tool_calls
    assert [(c.name, c.arguments["path"]) for c in first] == [
        ("pdf.extract_text", "papers/tides.pdf"),
        ("pdf.extract_text", "missing.pdf"),
    ]
    calls = [(c.name, json.dumps(c.arguments, sort_keys=True)) for c in ws.log]
    assert len(calls) == len(set(calls))  # nothing called twice, failures included
    assert "[papers/tides.pdf]" in ws.files["tides.md"]
    assert "South Korea" in final.text


async def test_tools_whose_arguments_cannot_be_filled_are_not_used() -> None:
    odd = [
        ToolSpec(
            "workspace.search",
            "needs an index name we cannot know",
            {"type": "object", "properties": {"index": {"type": "string"}}, "required": ["index"]},
        )
    ]
    messages: list[Message] = [SystemMessage("role: researcher"), UserMessage("Research bees.")]
    final, steps = await run_agent(OfflineModel(), messages, Workspace(), tools=odd)
    assert len(steps) == 1 and not final.tool_calls and OFFLINE_NOTE in final.text
