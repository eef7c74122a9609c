"""Tool-call formats by family: detection from the template, parsing (whole and
streamed), the grammar that forces each format, and special-token markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatfmt.callstream import ParsedMessage
from chatfmt.toolcalls import (
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    MISTRAL_ARGS,
    QWEN3_CODER,
    call_parser,
    detect_format,
    parse_calls,
)
from server.engine.constraints import ToolSpec
from server.engine.detokenizer import Detokenizer
from server.engine.output_grammar import Marks, ToolGrammar, output_grammar, special_marks

NAMES = ["get_weather", "add"]
SCHEMAS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
    "add": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
}

# Templates written here in each family's convention (the markers are what matters):
# how each family's own template renders a call to the model.
TEMPLATES = {
    "hermes": "{% for t in tools %}{{ t | tojson }}{% endfor %}"
    '<tool_call>\n{"name": <function-name>, "arguments": <args>}\n</tool_call>',
    "qwen3_coder": "{% if tools %}<tool_call>\n<function=example>\n<parameter=p>\nv\n"
    "</parameter>\n</function>\n</tool_call>{% endif %}",
    "llama3_json": "<|start_header_id|>system<|end_header_id|>{% if tools %}Respond in the "
    'format {"name": function name, "parameters": dictionary of argument name and its value}'
    "{% endif %}<|eot_id|>",
    "mistral": "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for m in messages %}{% if m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | tojson }}"
    "{% endif %}{% endfor %}",
    "mistral_args": "{% if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for m in messages %}[TOOL_CALLS]{{ m.name }}[ARGS]{{ m.arguments }}{% endfor %}",
}

# One turn with two calls, in each format
OUTPUTS = {
    "hermes": 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}'
    '\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
    "qwen3_coder": "Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nLisbon"
    "\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=add>\n<parameter=a>\n1"
    "\n</parameter>\n<parameter=b>\n2\n</parameter>\n</function>\n</tool_call>",
    "llama3_json": '{"name": "get_weather", "parameters": {"city": "Lisbon"}}; '
    '{"name": "add", "parameters": {"a": 1, "b": 2}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lisbon"}}, '
    '{"name": "add", "arguments": {"a": 1, "b": 2}}]',
    "mistral_args": '[TOOL_CALLS]get_weather[ARGS]{"city": "Lisbon"}'
    '[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}',
}
FORMATS = {f.name: f for f in (HERMES, QWEN3_CODER, LLAMA3_JSON, MISTRAL, MISTRAL_ARGS)}
EXPECTED = [("get_weather", {"city": "Lisbon"}), ("add", {"a": 1, "b": 2})]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_format_is_read_off_the_template(name: str) -> None:
    assert detect_format(TEMPLATES[name], True, {}).name == name


def test_a_template_without_tools_gets_the_default_format() -> None:
    assert detect_format(TEMPLATES["mistral"], False, {}) is HERMES
    assert detect_format("{{ messages }} {{ tools }}", True, {}) is HERMES


def _calls(parsed: ParsedMessage) -> list[tuple[str, Any]]:
    return [(name, json.loads(args)) for _id, name, args in parsed.calls]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_each_format_parses_to_openai_calls(name: str) -> None:
    parsed = parse_calls(OUTPUTS[name], FORMATS[name], NAMES, SCHEMAS)
    assert _calls(parsed) == EXPECTED
    expected_text = "Checking." if name in ("hermes", "qwen3_coder") else ""
    assert parsed.content == expected_text


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(OUTPUTS)),
    st.lists(st.integers(min_value=1, max_value=9), max_size=40),
)
def test_streamed_parsing_agrees_with_whole_parsing(name: str, sizes: list[int]) -> None:
    text = OUTPUTS[name] + " and some text after"
    fmt = FORMATS[name]
    whole = parse_calls(text, fmt, NAMES, SCHEMAS, bare_json=True)
    parser, streamed, at = call_parser(fmt, NAMES, SCHEMAS, bare_json=True), ParsedMessage(), 0
    for size in sizes:
        streamed.add(parser.feed(text[at : at + size]))
        at += size
    streamed.add(parser.feed(text[at:]))
    streamed.add(parser.finish())
    assert streamed.content == whole.content
    assert [(n, a) for _i, n, a in streamed.calls] == [(n, a) for _i, n, a in whole.calls]


@pytest.mark.parametrize(
    "text",
    [
        'Sure: {"name": "get_weather", "parameters": {"city": "Lisbon"}}',  # not the whole turn
        '{"name": "unknown", "parameters": {}}',  # not an offered function
        "plain text, no calls",
    ],
)
def test_llama3_json_that_is_not_a_call_stays_text(text: str) -> None:
    parsed = parse_calls(text, LLAMA3_JSON, NAMES, SCHEMAS)
    assert parsed.calls == [] and parsed.content == text


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Lisbon"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n```',
    ],
)
def test_auto_reads_a_turn_that_is_only_a_json_call(text: str) -> None:
    """Small models often answer `auto` with the call as bare or fenced JSON."""
    parsed = parse_calls(text, HERMES, NAMES, SCHEMAS, bare_json=True)
    assert _calls(parsed) == [("get_weather", {"city": "Lisbon"})] and parsed.content == ""
    # without bare_json (tool_choice "required" always writes the tags) it is text
    assert parse_calls(text, HERMES, NAMES, SCHEMAS).content == text


def test_json_that_is_not_a_call_stays_text_in_auto() -> None:
    for text in (
        '{"answer": 42}',
        '```python\nprint("hi")\n```',
        '{"name": "nope", "arguments": {}}',
    ):
        assert parse_calls(text, HERMES, NAMES, SCHEMAS, bare_json=True).content == text


def test_xml_values_take_their_schema_types() -> None:
    text = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    )
    parsed = parse_calls(text, QWEN3_CODER, NAMES, SCHEMAS)
    assert _calls(parsed) == [("get_weather", {"city": "42", "days": 3})]


# --- grammars ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def marker_tokenizer(tiny_model_path: Path) -> Any:
    """The tiny model's tokenizer with the families' markers added as special tokens."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tiny_model_path))
    markers = ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<think>", "</think>"]
    markers.append("<|python_tag|>")
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    return tokenizer


def _matcher(tokenizer: Any, text: str) -> Any:
    import llguidance
    import llguidance.hf

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ll = llguidance.hf.from_tokenizer(tokenizer, eos_token=[eos])
    return llguidance.LLMatcher(ll, text, log_level=0)


def _accepts(tokenizer: Any, grammar_text: str, output: str) -> bool:
    matcher = _matcher(tokenizer, grammar_text)
    assert not matcher.is_error(), matcher.get_error()
    ids = tokenizer.encode(output, add_special_tokens=False)
    return all(matcher.consume_token(t) for t in ids) and matcher.is_accepting()


SPECS = [ToolSpec(name, SCHEMAS[name]) for name in NAMES]


@pytest.mark.parametrize("special", [True, False], ids=["special-tokens", "text-markers"])
@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_the_grammar_forces_each_format(
    name: str, special: bool, marker_tokenizer: Any, tiny_model_path: Path
) -> None:
    from transformers import PreTrainedTokenizerFast

    fmt = FORMATS[name]
    tokenizer = (
        marker_tokenizer
        if special
        else PreTrainedTokenizerFast.from_pretrained(str(tiny_model_path))
    )
    marks = special_marks(tokenizer.get_added_vocab(), fmt.markers)
    assert bool(marks.ids) == special
    calls_only = OUTPUTS[name].removeprefix("Checking.\n")
    required = output_grammar(marks=marks, tools=ToolGrammar(SPECS, "required", True, fmt))
    assert _accepts(tokenizer, required.text, calls_only)
    one = output_grammar(marks=marks, tools=ToolGrammar(SPECS, "required", False, fmt))
    assert not _accepts(tokenizer, one.text, calls_only)  # two calls, one allowed
    auto = output_grammar(marks=marks, tools=ToolGrammar(SPECS, "auto", True, fmt))
    assert _accepts(tokenizer, auto.text, "Just an answer.")
    bad = calls_only.replace('"Lisbon"', "7").replace("Lisbon", "")
    if name != "qwen3_coder":  # (an XML string value may be empty)
        assert not _accepts(tokenizer, required.text, bad)


def test_special_markers_are_shown_to_the_parser(marker_tokenizer: Any) -> None:
    tok = marker_tokenizer
    ids = tok.encode('<tool_call>\n{"a": 1}\n</tool_call>', add_special_tokens=False)
    shown = frozenset(tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>"]))
    hidden = "".join(Detokenizer(tok).add(t) for t in ids)
    visible = "".join(Detokenizer(tok, shown).add(t) for t in ids)
    assert "<tool_call>" not in hidden and '{"a": 1}' in hidden
    assert visible == '<tool_call>\n{"a": 1}\n</tool_call>'


def test_text_markers_need_no_special_tokens() -> None:
    assert Marks()("<tool_call>") == '"<tool_call>"'
    assert Marks({"<tool_call>": 7})("<tool_call>") == "<[7]>"
