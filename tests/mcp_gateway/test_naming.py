"""Public tool names are valid for LLM APIs, unique and stable."""

from __future__ import annotations

from microhive.mcp.gateway import NameTable, public_name
from microhive.mcp.gateway.naming import valid_public_name


def test_simple_and_sanitised_names() -> None:
    assert public_name("calculator", "add") == "calculator_add"
    assert public_name("web", "fetch.url v2") == "web_fetch_url_v2"
    assert valid_public_name(public_name("ns", "ünïcode/tool"))


def test_long_names_are_cut_with_a_hash() -> None:
    name = public_name("namespace", "x" * 100)
    assert len(name) == 64 and valid_public_name(name)
    assert name != public_name("namespace", "x" * 99)


def test_collisions_get_distinct_stable_names() -> None:
    table = NameTable()
    first = table.assign("a_b", "c")
    second = table.assign("a", "b_c")
    assert first == "a_b_c" and second != first and valid_public_name(second)
    assert table.assign("a", "b_c") == second
    assert table.qualified(second) == "a.b_c"
