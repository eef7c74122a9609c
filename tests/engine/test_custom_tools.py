"""Custom tools (free-form input, optionally a Lark or regex grammar) in the chat core.

The input grammar is enforced while decoding: random walks on the tiny model's real
tokenizer (the worst model there is) always produce a call whose input the grammar
accepts, and the parsers read it back raw, whole or streamed, in each format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import llguidance
import pytest
from test_constraints import compile_, walk

from chatfmt.callstream import ParsedMessage, ToolCallParser
from chatfmt.toolcalls import HERMES, LLAMA3_JSON, QWEN3_CODER, parse_calls, prompt_tools
from chatfmt.tools import custom_call_text, render_messages
from server.engine.constraints import CustomInput, ToolSpec
from server.engine.output_grammar import Marks, ToolGrammar, output_grammar
from server.protocol.chat import ChatCompletionRequest
from server.protocol.tools import CUSTOM_INPUT_SCHEMA

#: a small language: `sum 1,22,333` (what a calculator tool might take)
LARK = 'start: "sum " NUM ("," NUM)*\nNUM: /[0-9]{1,3}/\n'
REGEX = r"[a-z]{2,5}-[0-9]{2}"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


@pytest.fixture(scope="module")
def eos(tokenizer: Any) -> frozenset[int]:
    return frozenset(
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
    )


def custom_spec(name: str, syntax: str, definition: str = "") -> ToolSpec:
    return ToolSpec(name, CUSTOM_INPUT_SCHEMA, True, CustomInput(syntax, definition))  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("syntax", "definition"), [("lark", LARK), ("regex", REGEX)])
def test_a_random_walk_writes_an_input_the_grammar_accepts(
    tokenizer: Any,
    eos: frozenset[int],
    syntax: str,
    definition: str,
    seed: int,
) -> None:
    tools = ToolGrammar([custom_spec("calc", syntax, definition)], "required", False, HERMES)
    grammar = output_grammar(marks=Marks(), tools=tools)
    text = walk(compile_(tokenizer, eos, grammar), tokenizer, eos, seed)
    parsed = parse_calls(text, HERMES, ["calc"], custom=["calc"])
    ((_, name, given),) = parsed.calls
    assert name == "calc"
    if syntax == "regex":
        assert re.fullmatch(definition, given), given
    else:
        assert re.fullmatch(r"sum [0-9]{1,3}(,[0-9]{1,3})*", given), given


def _accepts(tokenizer: Any, eos: frozenset[int], grammar: Any, output: str) -> bool:
    factory = compile_(tokenizer, eos, grammar)
    constraint = factory()
    try:
        for token in tokenizer.encode(output, add_special_tokens=False):
            constraint.advance(token)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        (
            HERMES,
            "<tool_call>\n<function=calc>\nsum 1,2\n</function>\n</tool_call>",
            "<tool_call>\n<function=calc>\nsum x\n</function>\n</tool_call>",
        ),
        (
            QWEN3_CODER,
            "<tool_call>\n<function=calc>\n<parameter=input>\nsum 7\n</parameter>\n</function>"
            "\n</tool_call>",
            "<tool_call>\n<function=calc>\n<parameter=input>\nadd 7\n</parameter>\n</function>"
            "\n</tool_call>",
        ),
    ],
)
def test_the_grammar_forces_the_raw_syntax(
    tokenizer: Any,
    eos: frozenset[int],
    fmt: Any,
    good: str,
    bad: str,
) -> None:
    tools = ToolGrammar([custom_spec("calc", "lark", LARK)], "required", False, fmt)
    grammar = output_grammar(marks=Marks(), tools=tools)
    assert _accepts(tokenizer, eos, grammar, good)
    assert not _accepts(tokenizer, eos, grammar, bad)
    schemas = {"calc": CUSTOM_INPUT_SCHEMA}
    ((_, _, given),) = parse_calls(good, fmt, ["calc"], schemas, custom=["calc"]).calls
    assert given.startswith("sum ")


def test_json_formats_write_the_input_as_a_json_string_and_a_regex_as_its_pattern(
    tokenizer: Any,
    eos: frozenset[int],
) -> None:
    tools = ToolGrammar([custom_spec("code", "regex", REGEX)], "required", False, LLAMA3_JSON)
    grammar = output_grammar(marks=Marks(), tools=tools)
    assert _accepts(tokenizer, eos, grammar, '{"name": "code", "parameters": {"input": "ab-12"}}')
    assert not _accepts(tokenizer, eos, grammar, '{"name": "code", "parameters": {"input": "A"}}')
    parsed = parse_calls(
        '{"name": "code", "parameters": {"input": "ab-12"}}', LLAMA3_JSON, ["code"], custom=["code"]
    )
    assert [c[1:] for c in parsed.calls] == [("code", "ab-12")]


def test_free_text_input_ends_at_the_close_tag_and_streams_piece_by_piece() -> None:
    text = (
        "Let me patch it.\n"
        + custom_call_text("apply_patch", "*** Begin Patch\n+x </function\n*** End Patch")
        + '\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    )
    whole = parse_calls(text, HERMES, ["apply_patch", "f"], custom=["apply_patch"])
    assert whole.content == "Let me patch it."
    assert [c[1:] for c in whole.calls] == [
        ("apply_patch", "*** Begin Patch\n+x </function\n*** End Patch"),
        ("f", '{"a": 1}'),
    ]
    for size in (1, 3, 7):
        parser, streamed = ToolCallParser(["apply_patch", "f"], ["apply_patch"]), ParsedMessage()
        for at in range(0, len(text), size):
            streamed.add(parser.feed(text[at : at + size]))
        streamed.add(parser.finish())
        assert streamed.content == whole.content
        assert [c[1:] for c in streamed.calls] == [c[1:] for c in whole.calls]


def test_a_custom_tool_is_shown_as_a_function_and_its_calls_written_back_raw() -> None:
    shown = prompt_tools(
        [{"type": "custom", "custom": {"name": "calc", "format": {"type": "grammar", "grammar": {
            "syntax": "lark", "definition": LARK}}}}],
        HERMES,
    )  # fmt: skip
    (tool,) = shown
    assert tool["type"] == "function" and tool["function"]["name"] == "calc"
    assert "<function=calc>" in tool["function"]["description"]
    assert LARK in tool["function"]["description"]
    history = [
        {"role": "user", "content": "add"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "custom", "custom": {"name": "calc", "input": "sum 1"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
    ]
    turns = render_messages(history, shown, native=False)
    assert turns[2]["content"] == custom_call_text("calc", "sum 1")
    hf = render_messages(history, shown, native=True)
    call = hf[1]["tool_calls"][0]
    assert call["function"] == {"name": "calc", "arguments": {"input": "sum 1"}}


def test_chat_requests_take_custom_tools_and_named_custom_choices() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "custom", "custom": {"name": "calc"}},
                {"type": "function", "function": {"name": "f"}},
            ],
            "tool_choice": {"type": "custom", "custom": {"name": "calc"}},
        }
    )
    use = request.tool_use()
    assert use is not None and use.mode == "required"
    assert [t.name for t in use.callable] == ["calc"] and use.custom_names == {"calc"}
    with pytest.raises(Exception, match="no custom tool named 'f'"):
        ChatCompletionRequest.model_validate(
            {**request.model_dump(), "tool_choice": {"type": "custom", "custom": {"name": "f"}}}
        )


def test_regex_grammars_become_lark_sub_grammars() -> None:
    tools = ToolGrammar([custom_spec("code", "regex", "a/b+")], "required", False, HERMES)
    serialized = json.loads(output_grammar(marks=Marks(), tools=tools).text)
    names = [g.get("name") for g in serialized["grammars"]]
    assert names[1:] == ["custom_0"]
    assert llguidance.LLMatcher.validate_grammar(json.dumps(serialized)) == ""


def test_a_bare_json_turn_never_calls_a_tool_its_grammar_did_not_hold() -> None:
    """Under auto, a turn that is only a JSON call is read as one (small models write
    them); such a turn was not held by a custom tool's grammar, so it stays text there."""
    turn = '{"name": "calc", "arguments": {"input": "12 + 30"}}'
    held = parse_calls(turn, HERMES, ["calc"], bare_json=True, custom=["calc"], grammars=["calc"])
    assert held.calls == [] and held.content == turn
    free = parse_calls(turn, HERMES, ["calc"], bare_json=True, custom=["calc"])
    assert [c[1:] for c in free.calls] == [("calc", "12 + 30")]
