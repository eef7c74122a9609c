"""Tool calls: the default prompt format, native templates, and the streaming parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatfmt.callstream import ParsedMessage, ToolCallParser, parse_message
from chatfmt.tools import call_text, render_messages, template_takes_tools
from server.engine.templates import ChatTemplate

NAMES = ["get_weather", "add"]
WEATHER = '{"city": "Pa}ris \\"{[", "days": [1, {"a": 2}]}'
TEXT = (
    "Let me check.\n"
    f'<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>\n'
    '<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>\n'
)


def parse_in_pieces(text: str, sizes: list[int]) -> ParsedMessage:
    parser, parsed, at = ToolCallParser(NAMES), ParsedMessage(), 0
    for size in sizes:
        parsed.add(parser.feed(text[at : at + size]))
        at += size
    parsed.add(parser.feed(text[at:]))
    parsed.add(parser.finish())
    return parsed


def test_calls_are_parsed_with_their_json_arguments() -> None:
    parsed = parse_message(TEXT, NAMES)
    assert parsed.content == "Let me check."
    assert [(name, args) for _id, name, args in parsed.calls] == [
        ("get_weather", WEATHER),
        ("add", "{}"),
    ]
    assert json.loads(parsed.calls[0][2])["city"] == 'Pa}ris "{['
    ids = [cid for cid, _name, _args in parsed.calls]
    assert all(cid.startswith("call_") for cid in ids) and len(set(ids)) == 2


@given(
    st.sampled_from(
        [
            TEXT,
            "plain  text\n\n ending with a partial <tool",
            '<tool_call>\n{"name": "unknown", "arguments": {}}\n</tool_call> after',
            '<tool_call>\n{"arguments": {}, "name": "add"}\n</tool_call>',
            '<tool_call>\n{"name": "add", "arguments": {"a": "cut sho',
            '<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>\n<tool_call>\n{"na',
            "  \n",
            "a < b <",
        ]
    ),
    st.lists(st.integers(1, 7), max_size=60),
)
def test_streamed_pieces_parse_like_the_whole_text(text: str, sizes: list[int]) -> None:
    whole = parse_message(text, NAMES)
    pieces = parse_in_pieces(text, sizes)
    assert pieces.content == whole.content
    assert [c[1:] for c in pieces.calls] == [c[1:] for c in whole.calls]


def test_blocks_that_are_not_calls_stay_text() -> None:
    unknown = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call> done'
    assert parse_message(unknown, NAMES) == ParsedMessage(content=unknown)
    reordered = '<tool_call>\n{"arguments": {}, "name": "add"}\n</tool_call>'
    assert parse_message(reordered, NAMES) == ParsedMessage(content=reordered)
    assert parse_message("no calls\n", NAMES) == ParsedMessage(content="no calls\n")


def test_a_call_cut_short_keeps_its_partial_arguments() -> None:
    parsed = parse_message('<tool_call>\n{"name": "add", "arguments": {"a": 1', NAMES)
    assert parsed.content == "" and [c[1:] for c in parsed.calls] == [("add", '{"a": 1')]


@pytest.mark.parametrize("cut", ["\n<tool_ca", '\n<tool_call>\n{"name": "ad'])
def test_a_call_cut_before_its_name_is_dropped(cut: str) -> None:
    whole = '<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>'
    parsed = parse_message(whole + cut, NAMES)
    assert parsed.content == "" and [c[1:] for c in parsed.calls] == [("add", "{}")]
    assert parse_message("1 <", NAMES).content == "1 <"  # one "<" is just text


def test_arguments_stream_before_the_call_ends() -> None:
    parser = ToolCallParser(NAMES)
    events = parser.feed('<tool_call>\n{"name": "add", "arguments": {"a": 1')
    assert [type(e).__name__ for e in events] == ["CallStart", "ArgumentsDelta"]
    assert events[1].text == '{"a": 1'  # type: ignore[union-attr]


CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "22C, sunny"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_default_format_rewrites_tools_calls_and_results() -> None:
    turns = render_messages(CONVERSATION, TOOLS, native=False)
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    system = turns[0]["content"]
    assert system.startswith("Be brief.\n\n# Tools") and json.dumps(TOOLS[0]) in system
    assert turns[2]["content"] == call_text("get_weather", '{"city": "Paris"}')
    assert turns[3]["content"] == "<tool_response>\n22C, sunny\n</tool_response>"
    # no tools offered (tool_choice "none"): no system block, history still rendered
    plain = render_messages(CONVERSATION[1:], None, native=False)
    assert [t["role"] for t in plain] == ["user", "assistant", "user"]


def test_the_tiny_chatml_template_gets_the_default_format(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    template = ChatTemplate(AutoTokenizer.from_pretrained(str(tiny_model_path)))
    assert not template.native_tools
    prompt = template.render(CONVERSATION, TOOLS)
    assert "<tools>" in prompt and "<tool_response>\n22C, sunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


NATIVE_TEMPLATE = (
    "{% if tools %}TOOLS:{{ tools | map(attribute='function.name') | join(',') }}|{% endif %}"
    "{% for m in messages %}{{ m.role }}:{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[{{ c.function.name }}({{ c.function.arguments.city }})]"
    "{% endfor %}{% if m.name %}({{ m.name }}){% endif %}|{% endfor %}"
)


def test_a_template_with_its_own_tool_format_renders_them(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    tokenizer.chat_template = NATIVE_TEMPLATE
    template = ChatTemplate(tokenizer)
    assert template.native_tools and template_takes_tools(NATIVE_TEMPLATE)
    prompt = template.render(CONVERSATION, TOOLS)
    # HF tool-use shapes: arguments as a dict, the tool result named after its call
    assert prompt.split("|") == [
        "TOOLS:get_weather",
        "system:Be brief.",
        "user:Weather in Paris?",
        "assistant:[get_weather(Paris)]",
        "tool:22C, sunny(get_weather)",
        "",
    ]


@pytest.mark.parametrize("template", ["{{ messages }}", "{% for m in messages %}{% endfor %}"])
def test_templates_without_tools_are_detected(template: str) -> None:
    assert not template_takes_tools(template)
