"""Caps on JSON values (`server.engine.json_bounds`), on the tiny model's real tokenizer.

The property tests walk the compiled grammar as a model that never wants to stop would:
any allowed token but end-of-turn, for as long as the grammar allows one (hypothesis
picks which, and may stop wherever end-of-turn is allowed). Every such walk must end
within a few dozen tokens and give a value within int64 / a finite float64 of at most
17 significant digits, inside the schema's own bounds.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chatfmt.toolcalls import ToolFormat
from server.engine.constraints import (
    ConstraintFactory,
    ToolSpec,
    compiler_for,
    json_object_grammar,
    json_schema_grammar,
)
from server.engine.json_bounds import (
    ANY_JSON,
    INT64_BOUND,
    MAX_ARRAY_ITEMS,
    MAX_DIGITS,
    MAX_STRING_LENGTH,
    bound_schema,
)
from server.engine.output_grammar import Marks, ToolGrammar, output_grammar

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# sign, 17 digits, a point, and one token per character at worst on a 768-token vocabulary
MAX_NUMBER_TOKENS = 24
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


@pytest.fixture(scope="module")
def eos(tokenizer: Any) -> frozenset[int]:
    return frozenset(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))


def compile_schema(
    tokenizer: Any, eos: frozenset[int], schema: dict[str, Any]
) -> ConstraintFactory:
    grammar = json_schema_grammar(schema, strict=False)
    return compiler_for(tokenizer, eos, "response_format").compile(grammar)


def admits(factory: ConstraintFactory, tokenizer: Any, eos: frozenset[int], text: str) -> bool:
    """Whether the grammar takes `text` and then allows the end of the turn."""
    constraint = factory()
    for token in tokenizer.encode(text, add_special_tokens=False):
        if not constraint.allowed(len(tokenizer))[token]:
            return False
        constraint.advance(token)
    return bool(constraint.allowed(len(tokenizer))[sorted(eos)].any())


def runaway_walk(
    factory: ConstraintFactory, tokenizer: Any, eos: frozenset[int], data: st.DataObject
) -> str:
    """Tokens of a model that keeps going while the grammar lets it; the text."""
    constraint, out = factory(), list[int]()
    for _ in range(MAX_NUMBER_TOKENS):
        allowed = {int(i) for i in np.flatnonzero(constraint.allowed(len(tokenizer)))}
        going = sorted(allowed - eos)
        if not going or (allowed & eos and data.draw(st.booleans(), label="stop")):
            assert allowed & eos, f"dead end after {tokenizer.decode(out)!r}"
            return str(tokenizer.decode(out))
        token = data.draw(st.sampled_from(going), label="token")
        constraint.advance(token)
        out.append(token)
    raise AssertionError(f"still going after {MAX_NUMBER_TOKENS} tokens: {tokenizer.decode(out)!r}")


def significant_digits(lexeme: str) -> int:
    """Digits from the first non-zero one to the last non-zero one."""
    return len(re.sub(r"[^0-9]", "", lexeme).strip("0"))


# the schema's own bounds: small ones (numbers with up to 3 decimals), or ones beyond
# int64 / 17 digits, which get clamped
int_low = st.none() | st.integers(-(10**6), 10**6) | st.sampled_from([-(10**30), -(2**63)])
int_high = st.none() | st.integers(-(10**6), 10**6) | st.sampled_from([10**30, 2**63])
thousandths = st.integers(-(10**9), 10**9).map(lambda n: n / 1000)
float_low = st.none() | thousandths | st.sampled_from([-1e300, -1e18])
float_high = st.none() | thousandths | st.sampled_from([1e300, 1e18])


def with_bounds(kind: str, low: Any, high: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    return schema


@PROPERTY
@given(low=int_low, high=int_high, data=st.data())
def test_every_admitted_integer_is_an_int64_within_the_schema(
    tokenizer: Any, eos: frozenset[int], low: Any, high: Any, data: st.DataObject
) -> None:
    if low is not None and high is not None and low > high:
        low, high = high, low
    factory = compile_schema(tokenizer, eos, with_bounds("integer", low, high))
    text = runaway_walk(factory, tokenizer, eos, data)
    value = json.loads(text)
    assert isinstance(value, int) and INT64_MIN <= value <= INT64_MAX, text
    assert (low is None or value >= low) and (high is None or value <= high), text
    assert len(text.lstrip("-")) <= 19


@PROPERTY
@given(
    low=float_low, high=float_high, step=st.none() | st.sampled_from([0.5, 0.01, 3]), data=st.data()
)
def test_every_admitted_number_is_a_finite_float64_of_17_digits(
    tokenizer: Any, eos: frozenset[int], low: Any, high: Any, step: Any, data: st.DataObject
) -> None:
    if low is not None and high is not None and low > high:
        low, high = high, low
    schema = with_bounds("number", low, high)
    if step is not None:
        schema["multipleOf"] = step
        # the schema must hold a value at all
        first = math.ceil((low if low is not None else 0) / step) * step
        assume(high is None or first <= high or low is None)
    text = runaway_walk(compile_schema(tokenizer, eos, schema), tokenizer, eos, data)
    value = float(text)
    assert math.isfinite(value) and "e" not in text.lower(), text
    assert significant_digits(text) <= MAX_DIGITS, text
    assert (low is None or value >= low) and (high is None or value <= high), text


@pytest.mark.parametrize(
    ("schema", "text", "admitted"),
    [
        ({"type": "integer"}, str(INT64_BOUND), True),
        ({"type": "integer"}, str(-INT64_BOUND), True),
        ({"type": "integer"}, str(INT64_BOUND + 1), False),
        ({"type": "integer"}, "1" * 20, False),
        ({"type": "integer", "maximum": 10**30}, str(INT64_BOUND + 1), False),
        ({"type": "integer", "minimum": 5, "maximum": 7}, "8", False),
        ({"type": "number"}, "1e5", False),  # no exponent
        ({"type": "number"}, "99999999999999999", True),  # 17 digits
        ({"type": "number"}, "123456789012345678", False),  # 18
        ({"type": "number"}, "1234567.1234567891", True),  # 17, with decimals
        ({"type": "number"}, "12345678.1234567891", False),  # 18
        ({"type": "number"}, "-0.0000000001", True),  # ten decimals
        ({"type": "number"}, "0.00000000001", False),  # eleven
        ({"type": "number", "minimum": 0, "maximum": 1}, "0.5", True),
        ({"type": "number", "minimum": 0, "maximum": 1}, "1.5", False),
        ({"type": "string"}, json.dumps("x" * MAX_STRING_LENGTH), True),
        ({"type": "string"}, json.dumps("x" * (MAX_STRING_LENGTH + 1)), False),
        ({"type": "string", "maxLength": 20000}, json.dumps("x" * 20000), True),
        ({"type": "array", "items": {"type": "integer"}}, json.dumps([1] * MAX_ARRAY_ITEMS), True),
        ({"type": "array", "items": {"type": "integer"}}, json.dumps([1] * 1025), False),
        ({"type": "object"}, json.dumps({"k" * 256: [1.5, "a", None, {"b": True}]}), True),
        ({"type": "object"}, json.dumps({"k" * 257: 1}), False),
        ({"type": "object"}, json.dumps({"a": 10**18}), False),
    ],
)
def test_edges(
    tokenizer: Any, eos: frozenset[int], schema: dict[str, Any], text: str, admitted: bool
) -> None:
    assert admits(compile_schema(tokenizer, eos, schema), tokenizer, eos, text) is admitted


def test_json_mode_and_tool_arguments_are_capped(tokenizer: Any, eos: frozenset[int]) -> None:
    compiler = compiler_for(tokenizer, eos, "response_format")
    json_mode = compiler.compile(json_object_grammar())
    assert admits(json_mode, tokenizer, eos, '{"a": [1, {"b": null}]}')
    assert not admits(json_mode, tokenizer, eos, '{"a": ' + "1" * 18 + "}")
    tools = [ToolSpec("f", {"type": "object", "properties": {"n": {"type": "integer"}}})]
    tags = ToolFormat("hermes", "<t>", "</t>", ("<t>", "</t>"))
    grammar = output_grammar(marks=Marks(), tools=ToolGrammar(tools, "required", False, tags))
    calls = compiler.compile(grammar)
    assert admits(calls, tokenizer, eos, '<t>\n{"name": "f", "arguments": {"n": 7}}\n</t>')
    n = "9" * 20
    assert not admits(
        calls, tokenizer, eos, f'<t>\n{{"name": "f", "arguments": {{"n": {n}}}}}\n</t>'
    )


def test_the_schemas_own_bounds_are_kept() -> None:
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "big": {"type": "integer", "minimum": -(10**30)},
            "code": {"type": "string", "maxLength": 3},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "kind": {"enum": ["a", "b"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "additionalProperties": False,
    }
    out = bound_schema(schema)["properties"]
    assert out["age"] == {"type": "integer", "minimum": 0, "maximum": 130}
    assert out["big"] == {"type": "integer", "minimum": -INT64_BOUND, "maximum": INT64_BOUND}
    assert out["code"] == {"type": "string", "maxLength": 3}
    assert out["tags"]["maxItems"] == 2 and out["tags"]["items"]["maxLength"] == MAX_STRING_LENGTH
    assert out["kind"] == {"enum": ["a", "b"]}
    # within [0, 1] the finest tier holds every other one
    assert out["score"] == {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 1e-10}
    assert "$defs" not in bound_schema(schema)  # nothing refers to any-JSON


def test_caps_never_make_a_schema_unsatisfiable() -> None:
    # bounds beyond what a cap allows: left as given (the schema asked for it)
    for schema in (
        {"type": "integer", "minimum": 10**20},
        {"type": "number", "exclusiveMinimum": 1e30},
        {"type": "string", "minLength": MAX_STRING_LENGTH + 1},
        {"type": "array", "minItems": MAX_ARRAY_ITEMS + 1, "items": {"type": "null"}},
    ):
        out = bound_schema(schema)
        assert {k: v for k, v in out.items() if k not in schema} == {}, out
    # a cap under `not` would widen the schema
    negated = {"not": {"type": "string"}}
    assert bound_schema(negated) == negated


def test_any_json_is_one_shared_definition() -> None:
    out = bound_schema({"type": "object", "properties": {"x": {}, "y": {"type": "array"}}})
    ref = {"$ref": f"#/$defs/{ANY_JSON}"}
    assert out["properties"]["x"] == ref and out["properties"]["y"]["items"] == ref
    assert out["additionalProperties"] == ref  # extra values capped, keys not (listed properties)
    assert set(out["$defs"]) == {ANY_JSON}
    # a nested $id would resolve `#/$defs/...` elsewhere: no references then
    nested = bound_schema(
        {"type": "object", "properties": {"x": {"$id": "urn:x", "type": "array"}}}
    )
    assert "$defs" not in nested and "items" not in nested["properties"]["x"]
    assert nested["properties"]["x"]["maxItems"] == MAX_ARRAY_ITEMS
