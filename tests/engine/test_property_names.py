"""A `propertyNames` that allows every string key (zod's `z.record`, in Claude Code's tool
schemas) is dropped before llguidance, which does not implement the keyword; others stay."""

from __future__ import annotations

import json

import llguidance

from server.engine.constraints import JSON_OPTIONS, json_schema_grammar
from server.engine.json_bounds import bounded_schema

RECORD = {"type": "object", "propertyNames": {"type": "string"}, "additionalProperties": {}}


def test_string_key_names_are_dropped_wherever_they_are() -> None:
    schema = {
        "type": "object",
        "properties": {
            "metadata": RECORD,
            # a property named like the keyword is a property, not the keyword
            "propertyNames": {"type": "string"},
            "list": {"type": "array", "items": {**RECORD, "propertyNames": True}},
        },
        "anyOf": [{"propertyNames": {"type": "string", "description": "any key"}}, {}],
    }
    out = json.dumps(bounded_schema(schema, JSON_OPTIONS))
    assert out.count('"propertyNames"') == 1  # the property's name alone
    grammar = json_schema_grammar(schema, strict=False)
    assert llguidance.LLMatcher.validate_grammar(grammar.text) == ""


def test_a_real_key_constraint_is_not_dropped() -> None:
    schema = {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}
    grammar = json_schema_grammar(schema, strict=False)
    assert "propertyNames" in llguidance.LLMatcher.validate_grammar(grammar.text)
