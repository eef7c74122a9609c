"""Threshold rules on cleaned records."""

from __future__ import annotations

from typing import Any

from datalab.config import PipelineConfig
from datalab.formats import ChatRecord, parse_record
from datalab.validate import check_rules, count_urls

DEFAULT = PipelineConfig()


def _rec(*messages: dict[str, Any]) -> ChatRecord:
    _, rec, problems = parse_record({"messages": list(messages)}, 1)
    assert rec is not None, problems
    return rec


def _codes(
    rec: ChatRecord, config: PipelineConfig = DEFAULT, **kw: Any
) -> list[tuple[str, str | None]]:
    return [(p.code, p.field) for p in check_rules(rec, 5, config, **kw)]


U = {"role": "user", "content": "What is the capital of France?"}


def test_a_good_answer_passes() -> None:
    assert (
        _codes(_rec(U, {"role": "assistant", "content": "The capital of France is Paris."})) == []
    )


def test_answer_too_short_and_too_few_words() -> None:
    assert _codes(_rec(U, {"role": "assistant", "content": "Paris."})) == [
        ("answer_too_short", "messages[1].content"),
        ("too_few_words", "messages[1].content"),
    ]
    assert _codes(_rec(U, {"role": "assistant", "content": "Supercalifragilistic"})) == [
        ("too_few_words", "messages[1].content")
    ]


def test_answer_too_long_in_characters_and_in_tokens() -> None:
    rec = _rec(U, {"role": "assistant", "content": "word " * 50})
    assert _codes(rec, PipelineConfig(max_answer_chars=100)) == [
        ("answer_too_long", "messages[1].content")
    ]
    config = PipelineConfig(max_answer_tokens=20)
    assert _codes(rec, config, count_tokens=lambda t: len(t.split())) == [
        ("answer_too_long", "messages[1].content")
    ]
    assert _codes(rec, config) == []  # no tokenizer, no token rule


def test_empty_content_after_cleaning_but_tool_calls_may_be_empty() -> None:
    rec = _rec(
        {"role": "user", "content": ""}, {"role": "assistant", "content": "A fine answer here."}
    )
    assert _codes(rec) == [("empty_content", "messages[0].content")]
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    rec = _rec(
        U,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "1", "content": "Paris"},
        {"role": "assistant", "content": "It is Paris, of course."},
    )
    assert _codes(rec) == []


def test_untrained_answers_are_not_judged() -> None:
    rec = _rec(
        U,
        {"role": "assistant", "content": "No.", "weight": 0},
        U,
        {"role": "assistant", "content": "Paris is the capital city."},
    )
    assert _codes(rec) == []


def test_too_many_urls_across_the_conversation() -> None:
    rec = _rec(
        {"role": "user", "content": "See https://a.example and www.b.example"},
        {"role": "assistant", "content": "Also http://c.example/page is useful."},
    )
    assert _codes(rec) == [("too_many_urls", "messages")]
    assert _codes(rec, PipelineConfig(max_urls=3)) == []
    assert _codes(rec, PipelineConfig(max_urls=None)) == []
    assert count_urls("no links here") == 0


def test_thresholds_are_configurable() -> None:
    rec = _rec(U, {"role": "assistant", "content": "Paris."})
    assert _codes(rec, PipelineConfig(min_answer_chars=1, min_words=1)) == []
