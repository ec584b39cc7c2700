"""Tool retrieval: the evaluation set is sound, and fused retrieval beats a naive baseline."""

from __future__ import annotations

import re

import httpx
import pytest

from microhive.embeddings import open_embedder
from microhive.mcp.gateway import GatewaySettings
from microhive.mcp.registry import UpstreamSpec
from microhive.mcp.retrieval import (
    ToolDoc,
    ToolRetriever,
    load_eval_set,
    recall,
    reciprocal_rank_fusion,
)

from .harness import gateway, upstream


def test_eval_set_integrity() -> None:
    ev = load_eval_set()
    names = [t.qualified for t in ev.tools]
    assert len(names) >= 200 and len(set(names)) == len(names)
    assert len({n.split(".")[0] for n in names}) >= 20  # many domains
    assert len(ev.queries) >= 100
    assert len({q for q, _ in ev.queries}) == len(ev.queries)
    assert {label for _, label in ev.queries} <= set(names)
    for tool in ev.tools:
        assert tool.description.endswith(".")
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", tool.qualified)


def _overlap_baseline(tools: list[ToolDoc], queries: list[tuple[str, str]], k: int) -> float:
    """Rank by how many raw query words appear in the tool's name and description."""
    hits = 0
    for task, label in queries:
        words = set(re.findall(r"[a-z]+", task.lower()))
        ranked = sorted(
            tools,
            key=lambda t: (
                -len(words & set(re.findall(r"[a-z]+", f"{t.qualified} {t.description}".lower())))
            ),
        )
        hits += label in [t.qualified for t in ranked[:k]]
    return hits / len(queries)


@pytest.fixture(scope="module")
def minilm_retriever() -> ToolRetriever:
    return ToolRetriever(load_eval_set().tools, open_embedder("minilm"))


def test_fused_retrieval_beats_the_baseline(minilm_retriever: ToolRetriever) -> None:
    ev = load_eval_set()
    baseline = _overlap_baseline(ev.tools, ev.queries, 5)
    keyword = recall(ToolRetriever(ev.tools), ev.queries, "keyword")
    fused = recall(minilm_retriever, ev.queries, "fused")
    assert keyword[5] > baseline
    assert fused[5] > keyword[5]
    assert fused[5] >= 0.8 and fused[1] >= 0.5


def test_rrf_prefers_items_ranked_well_by_both() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "a"]])
    assert [h.qualified for h in fused][:1] == ["b"]


def test_retrieval_only_returns_allowed_tools(minilm_retriever: ToolRetriever) -> None:
    hits = minilm_retriever.search(
        "send an email to the team", 5, allowed=lambda q: not q.startswith("email.")
    )
    assert hits and all(not h.qualified.startswith("email.") for h in hits)


async def test_gateway_search_endpoint_respects_roles() -> None:
    roles = {"narrow": ("tok-narrow", ("calc.add", "calc.whoami"))}
    settings = GatewaySettings(embedder="hashing")
    async with (
        upstream() as url,
        gateway([UpstreamSpec("calc", url)], roles=roles, settings=settings) as (_, base),
        httpx.AsyncClient(base_url=base, headers={"Authorization": "Bearer tok-narrow"}) as http,
    ):
        response = await http.post("/tools/search", json={"task": "add two integers", "k": 5})
        assert response.status_code == 200, response.text
        found = [t["qualified"] for t in response.json()["tools"]]
        assert found[0] == "calc.add" and set(found) <= {"calc.add", "calc.whoami"}
        assert response.json()["tools"][0]["tool"]["name"] == "calc_add"
        bad = await http.post("/tools/search", json={"task": "", "k": 5})
        assert bad.status_code == 400
        anonymous = await http.post(
            "/tools/search", json={"task": "x"}, headers={"Authorization": ""}
        )
        assert anonymous.status_code == 401
