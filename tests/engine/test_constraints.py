"""Grammar-constrained decoding with llguidance, on the tiny model's real tokenizer.

"Walks" sample uniformly among the ids the mask allows until end of turn: the worst
case for a grammar (a model with no idea what JSON is), so whatever they produce must
still parse and validate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel
from schemas import Add, GetWeather, Person

from chatfmt.callstream import parse_message
from chatfmt.toolcalls import HERMES
from server.engine.base import TokenConstraint
from server.engine.constraints import (
    ConstraintFactory,
    GrammarConstraint,
    ToolSpec,
    compiler_for,
    json_object_grammar,
    json_schema_grammar,
    strict_schema,
)
from server.engine.output_grammar import Marks, ToolGrammar, output_grammar
from server.errors import InvalidRequest

TOOLS = [
    ToolSpec("get_weather", GetWeather.model_json_schema(), strict=True),
    ToolSpec("add", Add.model_json_schema(), strict=True),
]
ARGUMENTS: dict[str, type[BaseModel]] = {"get_weather": GetWeather, "add": Add}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


@pytest.fixture(scope="module")
def eos(tokenizer: Any) -> frozenset[int]:
    return frozenset(
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
    )


def compile_(tokenizer: Any, eos: frozenset[int], grammar: Any) -> ConstraintFactory:
    return compiler_for(tokenizer, eos, "response_format").compile(grammar)


def allowed_ids(constraint: TokenConstraint, tokenizer: Any) -> list[int]:
    return [int(i) for i in np.flatnonzero(constraint.allowed(len(tokenizer)))]


def feed(constraint: TokenConstraint, tokenizer: Any, text: str) -> None:
    for token in tokenizer.encode(text, add_special_tokens=False):
        constraint.advance(token)


def walk(factory: ConstraintFactory, tokenizer: Any, eos: frozenset[int], seed: int) -> str:
    """Uniformly random allowed tokens until an end-of-turn id; the text."""
    constraint, rng, out = factory(), np.random.default_rng(seed), []
    for _ in range(600):
        token = int(rng.choice(allowed_ids(constraint, tokenizer)))
        constraint.advance(token)
        if token in eos:
            return str(tokenizer.decode(out))
        out.append(token)
    raise AssertionError(f"no end of turn after 600 tokens: {tokenizer.decode(out)!r}")


@pytest.mark.parametrize("seed", range(12))
def test_json_schema_walks_always_validate(tokenizer: Any, eos: frozenset[int], seed: int) -> None:
    grammar = json_schema_grammar(Person.model_json_schema(), strict=True)
    text = walk(compile_(tokenizer, eos, grammar), tokenizer, eos, seed)
    Person.model_validate_json(text)
    # compact, json.dumps-style spacing
    assert text == json.dumps(json.loads(text), ensure_ascii=False)


def test_mask_allows_only_valid_continuations(tokenizer: Any, eos: frozenset[int]) -> None:
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Lisbon"]}}}
    constraint = compile_(tokenizer, eos, json_schema_grammar(schema, strict=True))()
    first = {tokenizer.decode([t]) for t in allowed_ids(constraint, tokenizer)}
    assert first and all(t.startswith("{") for t in first)
    feed(constraint, tokenizer, '{"city": "')
    rest = ['Paris"}', 'Lisbon"}']
    texts = [tokenizer.decode([t]) for t in allowed_ids(constraint, tokenizer)]
    assert texts and all(any(r.startswith(t) for r in rest) for t in texts)
    assert {t[0] for t in texts} == {"P", "L"}


def test_after_the_grammar_only_end_of_turn(tokenizer: Any, eos: frozenset[int]) -> None:
    constraint = compile_(tokenizer, eos, json_object_grammar())()
    feed(constraint, tokenizer, '{"a": [1, {"b": null}]}')
    assert set(allowed_ids(constraint, tokenizer)) == eos
    end = min(eos)
    constraint.advance(end)
    # MLX computes one step past the end: advancing further is a no-op, the mask stays
    constraint.advance(tokenizer.encode("x", add_special_tokens=False)[0])
    assert set(allowed_ids(constraint, tokenizer)) == eos
    wide = constraint.allowed(len(tokenizer) + 40)  # padded logits: extra ids refused
    assert wide.shape == (len(tokenizer) + 40,) and not wide[len(tokenizer) :].any()


def test_json_mode_refuses_anything_but_an_object(tokenizer: Any, eos: frozenset[int]) -> None:
    constraint = compile_(tokenizer, eos, json_object_grammar())()
    with pytest.raises(RuntimeError, match="constrained decoding failed"):
        feed(constraint, tokenizer, "[1]")


def test_strict_mode_forbids_unlisted_properties(tokenizer: Any, eos: frozenset[int]) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    loose = compile_(tokenizer, eos, json_schema_grammar(schema, strict=False))()
    strict = compile_(tokenizer, eos, json_schema_grammar(schema, strict=True))()
    comma = tokenizer.encode(",", add_special_tokens=False)[0]
    for constraint in (loose, strict):
        feed(constraint, tokenizer, '{"a": 1')
    assert comma in allowed_ids(loose, tokenizer)
    assert comma not in allowed_ids(strict, tokenizer)


def test_strict_schema_rewrites_subschemas_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "string"}}},
            "items": {"type": "array", "items": {"type": "object"}},
            "kind": {"enum": [{"type": "object"}]},
        },
        "$defs": {"Leaf": {"type": "object", "additionalProperties": True}},
    }
    out = strict_schema(schema)
    assert out["additionalProperties"] is False
    props = out["properties"]
    assert set(props) == {"properties", "items", "kind"}  # property names untouched
    assert props["properties"]["additionalProperties"] is False
    assert props["items"]["items"]["additionalProperties"] is False
    assert props["kind"]["enum"] == [{"type": "object"}]  # data, not a schema
    assert out["$defs"]["Leaf"]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the request's schema is not mutated


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "strin"}, "strin"),
        ({"type": "string", "format": "no-such-format"}, "no-such-format"),
        ({"$ref": "#/$defs/missing"}, "missing"),
    ],
)
def test_bad_schemas_are_400s(
    tokenizer: Any, eos: frozenset[int], schema: dict[str, Any], needle: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        compile_(tokenizer, eos, json_schema_grammar(schema, strict=False))
    assert info.value.param == "response_format" and needle in info.value.message


def tools_grammar(**kw: Any) -> Any:
    """The Hermes tool-call grammar with text tags (the tiny vocabulary has no such tokens)."""
    spec = ToolGrammar(kw.pop("tools", TOOLS), kw.pop("mode"), kw.pop("parallel"), HERMES)
    return output_grammar(marks=Marks(), tools=spec, **kw)


def check_calls(text: str, names: list[str]) -> list[tuple[str, str, str]]:
    parsed = parse_message(text, names)
    assert parsed.content == "" and parsed.calls, text
    for _id, name, args in parsed.calls:
        ARGUMENTS[name].model_validate_json(args)
    return parsed.calls


@pytest.mark.parametrize("seed", range(8))
def test_required_tool_calls_are_valid(tokenizer: Any, eos: frozenset[int], seed: int) -> None:
    names = [t.name for t in TOOLS]
    one = compile_(tokenizer, eos, tools_grammar(mode="required", parallel=False))
    assert len(check_calls(walk(one, tokenizer, eos, seed), names)) == 1
    many = compile_(tokenizer, eos, tools_grammar(mode="required", parallel=True))
    check_calls(walk(many, tokenizer, eos, seed), names)


def test_parallel_calls_come_one_per_line(tokenizer: Any, eos: frozenset[int]) -> None:
    factory = compile_(tokenizer, eos, tools_grammar(mode="required", parallel=True))
    names = ["get_weather", "add"]
    counts = [len(check_calls(walk(factory, tokenizer, eos, seed), names)) for seed in range(12)]
    assert max(counts) > 1  # a uniform walk takes the "another call" branch sometimes


def test_named_tool_grammar_allows_only_that_function(tokenizer: Any, eos: frozenset[int]) -> None:
    grammar = tools_grammar(tools=[TOOLS[1]], mode="required", parallel=False)
    factory = compile_(tokenizer, eos, grammar)
    for seed in range(5):
        (call,) = check_calls(walk(factory, tokenizer, eos, seed), ["add"])
        assert call[1] == "add"


def test_auto_allows_text_and_then_only_a_valid_call(tokenizer: Any, eos: frozenset[int]) -> None:
    single = compile_(tokenizer, eos, tools_grammar(mode="auto", parallel=False))()
    assert len(allowed_ids(single, tokenizer)) > len(tokenizer) * 0.8  # free text
    feed(single, tokenizer, "Let me look that up. <tool_call>\n")
    assert {tokenizer.decode([t]) for t in allowed_ids(single, tokenizer)} <= {"{", '{"'}
    feed(single, tokenizer, '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert set(allowed_ids(single, tokenizer)) == eos  # one call only: then the turn ends
    many = compile_(tokenizer, eos, tools_grammar(mode="auto", parallel=True))()
    feed(
        many, tokenizer, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    )
    assert len(allowed_ids(many, tokenizer)) > len(tokenizer) * 0.8


def test_auto_with_a_response_format_answers_json_or_calls(
    tokenizer: Any, eos: frozenset[int]
) -> None:
    grammar = tools_grammar(
        mode="auto",
        parallel=False,
        answer=GetWeather.model_json_schema(),
        answer_strict=True,
    )
    factory = compile_(tokenizer, eos, grammar)
    first = {tokenizer.decode([t])[0] for t in allowed_ids(factory(), tokenizer)}
    assert first == {"{", "<"}
    for seed in range(6):
        text = walk(factory, tokenizer, eos, seed)
        if text.startswith("{"):
            GetWeather.model_validate_json(text)
        else:
            check_calls(text, ["get_weather", "add"])


def test_the_llguidance_tokenizer_is_built_once(tokenizer: Any, eos: frozenset[int]) -> None:
    assert compiler_for(tokenizer, eos, "tools") is compiler_for(tokenizer, eos, "tools")


def test_a_tokenizer_llguidance_cannot_read_is_a_400() -> None:
    class SlowTokenizer:
        """Not a `PreTrainedTokenizerFast`."""

    with pytest.raises(InvalidRequest) as info:
        compiler_for(SlowTokenizer(), frozenset({0}), "tools")
    assert info.value.param == "tools" and "constrained decoding" in info.value.message


def test_end_of_turn_mask_holds_any_id() -> None:
    # bit 31 of a word is the int32 sign bit
    constraint = GrammarConstraint(None, frozenset({31, 95, 100}), 768)
    constraint.advance(31)
    assert np.flatnonzero(constraint.allowed(768)).tolist() == [31, 95, 100]
