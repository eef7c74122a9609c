"""Reasoning models: detection, the split of streamed text into reasoning and answer,
and the grammar that puts a constraint after the reasoning block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatfmt.reasoning import (
    ReasoningFormat,
    ReasoningSplitter,
    detect_reasoning,
    split_reasoning,
    starts_inside,
)
from chatfmt.toolcalls import HERMES
from server.engine.chatformat import template_variables
from server.engine.constraints import ToolSpec
from server.engine.output_grammar import (
    Thinking,
    ToolGrammar,
    output_grammar,
    special_marks,
)

FMT = ReasoningFormat()

SWITCH_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def test_a_template_that_strips_or_switches_thinking_marks_a_reasoning_model() -> None:
    r1 = "{{ content.split('</think>')[-1] }}"
    assert detect_reasoning(r1, template_variables(r1), {}) == ReasoningFormat()
    found = detect_reasoning(SWITCH_TEMPLATE, template_variables(SWITCH_TEMPLATE), {})
    assert found is not None and found.switch == "enable_thinking"
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert detect_reasoning(plain, template_variables(plain), {}) is None


def test_the_prompt_may_open_the_block() -> None:
    assert starts_inside("<|im_start|>assistant\n<think>\n", FMT)
    assert not starts_inside("<|im_start|>assistant\n<think>\n\n</think>\n\n", FMT)
    assert not starts_inside("<|im_start|>assistant\n", FMT)


@pytest.mark.parametrize(
    ("text", "inside", "expected"),
    [
        ("<think>\nLet me see.\n</think>\n\nParis.", False, ("Let me see.\n", "Paris.")),
        ("Let me see.</think>Paris.", True, ("Let me see.", "Paris.")),
        ("  Paris.", False, ("", "  Paris.")),
        ("<think>cut short by max_tok", False, ("cut short by max_tok", "")),
        ("still thinking </thi", True, ("still thinking </thi", "")),
    ],
)
def test_reasoning_is_split_from_the_answer(
    text: str, inside: bool, expected: tuple[str, str]
) -> None:
    assert split_reasoning(text, FMT, inside=inside) == expected


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(
        [
            ("<think>\nA </ b <th\n</think>\n\nThe answer <think> stays.", False),
            ("thinking only, never closed", True),
            ("x</think>y", True),
            ("no reasoning at all", False),
        ]
    ),
    st.lists(st.integers(min_value=1, max_value=7), max_size=30),
)
def test_streamed_split_agrees_with_whole(case: tuple[str, bool], sizes: list[int]) -> None:
    text, inside = case
    splitter, reasoning, answer, at = ReasoningSplitter(FMT, inside=inside), "", "", 0
    for size in [*sizes, len(text)]:
        r, a = splitter.feed(text[at : at + size])
        reasoning, answer, at = reasoning + r, answer + a, at + size
    r, a = splitter.finish()
    assert (reasoning + r, answer + a) == split_reasoning(text, FMT, inside=inside)


# --- the constraint applies after the reasoning block --------------------------------


@pytest.fixture(scope="module", params=["text-markers", "special-tokens"])
def tokenizer(request: pytest.FixtureRequest, tiny_model_path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_model_path))
    if request.param == "special-tokens":
        tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    return tok


def _accepts(tok: Any, grammar_text: str, output: str) -> bool:
    import llguidance
    import llguidance.hf

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    matcher = llguidance.LLMatcher(
        llguidance.hf.from_tokenizer(tok, eos_token=[eos]), grammar_text, log_level=0
    )
    assert not matcher.is_error(), matcher.get_error()
    ids = tok.encode(output, add_special_tokens=False)
    return all(matcher.consume_token(t) for t in ids) and matcher.is_accepting()


CALL = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'


def test_json_and_calls_come_after_the_reasoning_block(tokenizer: Any) -> None:
    marks = special_marks(tokenizer.get_added_vocab(), ["<think>", "</think>"])
    inside = Thinking(FMT, inside=True)
    answer = output_grammar(marks=marks, answer={"type": "object"}, thinking=inside)
    assert _accepts(tokenizer, answer.text, 'I should answer in JSON.</think>\n\n{"a": 1}')
    assert not _accepts(tokenizer, answer.text, '{"a": 1}')  # the block must close first
    assert not _accepts(tokenizer, answer.text, "thinking</think>\n\nnot json")
    tools = ToolGrammar([ToolSpec("f", {"type": "object"})], "required", False, HERMES)
    outside = Thinking(FMT, inside=False)
    calls = output_grammar(marks=marks, tools=tools, thinking=outside)
    assert _accepts(tokenizer, calls.text, f"<think>call f</think>\n{CALL}")
    assert _accepts(tokenizer, calls.text, CALL)  # a model may skip thinking
    assert not _accepts(tokenizer, calls.text, "<think>call f</think>\nno call")
