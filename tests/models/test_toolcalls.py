"""Tool calls written as text (bare, fenced, tagged) are recovered; other JSON is left alone."""

from __future__ import annotations

import pytest

from microhive.models import ToolSpec, recover_tool_calls
from microhive.models.toolcalls import MAX_CALLS, content_mode_prompt

TOOLS = [
    ToolSpec("calculator.add", "Add.", {"type": "object", "properties": {"a": {}, "b": {}}}),
    ToolSpec("workspace.search", "Search."),
]


def _calls(text: str) -> list[tuple[str, dict[str, object], str | None]]:
    calls, _ = recover_tool_calls(text, TOOLS)
    return [(c.name, dict(c.arguments), c.error) for c in calls]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "calculator.add", "arguments": {"a": 2, "b": 3}}',
        '{"name": "calculator__add", "arguments": {"a": 2, "b": 3}}',
        '```json\n{"name": "calculator__add", "arguments": {"a": 2, "b": 3}}\n```',
        '```\n{"name": "calculator.add", "parameters": {"a": 2, "b": 3}}\n```',
        '<tool_call>\n{"name": "calculator__add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
        '<tool_call>{"name": "calculator.add", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}',
        '{"type": "function", "function": {"name": "calculator__add", '
        '"arguments": "{\\"a\\": 2, \\"b\\": 3}"}}',
        'I will add them.\n{"name": "calculator.add", "arguments": {"a": 2, "b": 3}}',
    ],
)
def test_every_written_form_is_recovered(text: str) -> None:
    assert _calls(text) == [("calculator.add", {"a": 2, "b": 3}, None)]


def test_a_list_of_calls_and_the_text_around_them() -> None:
    text = (
        'First: [{"name": "calculator.add", "arguments": {"a": 1}}, '
        '{"name": "workspace.search", "arguments": {"query": "bees"}}] then done.'
    )
    calls, rest = recover_tool_calls(text, TOOLS)
    assert [c.name for c in calls] == ["calculator.add", "workspace.search"]
    assert rest == "First:  then done."
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 5.",
        '{"findings": [{"name": "bees", "fact": "they pollinate"}]}',
        '{"name": "calculator.add", "notes": "a record that mentions a tool"}',
        '{"name": "Ada Lovelace", "born": 1815}',
        "```json\n[1, 2, 3]\n```",
    ],
)
def test_other_json_is_not_a_call(text: str) -> None:
    assert recover_tool_calls(text, TOOLS) == ([], text)


def test_an_unknown_tool_in_call_shape_is_recovered_for_the_loop_to_refuse() -> None:
    assert _calls('{"name": "web.fetch", "arguments": {"url": "x"}}') == [
        ("web.fetch", {"url": "x"}, None)
    ]


def test_broken_json_gives_a_call_with_the_reason() -> None:
    [(name, args, error)] = _calls('<tool_call>{"name": "calculator.add", "arguments": {"a": 2,}}')
    assert (name, args) == ("calculator.add", {})
    assert error is not None and "not valid JSON at column" in error
    [(name, args, error)] = _calls('{"name": "calculator.add", "arguments": "{\\"a\\": 2,"}')
    assert error is not None and "arguments are not valid JSON" in error
    [(_, _, error)] = _calls('{"name": "calculator.add", "arguments": [1, 2]}')
    assert error is not None and "must be a JSON object" in error


def test_recovery_is_bounded() -> None:
    many = "".join(f'{{"name": "calculator.add", "arguments": {{"a": {i}}}}}\n' for i in range(50))
    assert len(recover_tool_calls(many, TOOLS)[0]) == MAX_CALLS
    # Deep or unclosed nesting is decoded a bounded number of times, not once per brace.
    for nasty in ('{"a": ' * 5000, "[{" * 20000, '{"name": "calculator.add", ' * 3000):
        assert recover_tool_calls(nasty, TOOLS)[0] == []


def test_content_mode_prompt_names_every_tool_and_the_format() -> None:
    prompt = content_mode_prompt(TOOLS)
    assert "calculator.add" in prompt and "workspace.search" in prompt
    assert "<tool_call>" in prompt and '"properties"' in prompt


def test_a_call_repeated_in_one_answer_is_asked_for_once() -> None:
    one = '{"name": "calculator.add", "arguments": {"a": 1, "b": 2}}\n'
    calls, _ = recover_tool_calls(one * 5 + '{"name": "calcul', TOOLS)
    assert [(c.name, dict(c.arguments)) for c in calls] == [("calculator.add", {"a": 1, "b": 2})]
