"""Caps on JSON values, so a weak model cannot run away inside one value.

A JSON schema's `integer` has no length: SmolLM2-135M asked at temperature 0 for
`{name, country, population: int}` writes `"population": 1111…` until `max_tokens`,
and every digit is valid JSON. The same holds for numbers, strings, arrays and the
values of JSON mode. So before llguidance compiles a schema, `bound_schema` rewrites it
with keywords llguidance 1.9 honours (`minimum` / `maximum`, `multipleOf`, `maxLength`,
`maxItems`, `patternProperties`):

* **integer**: within int64, `±INT64_BOUND` (19 digits and a sign at most). llguidance
  reads bounds as float64 and converts them to int64; `2**63 - 1024` is the largest
  float64 below 2**63, so the conversion is exact (±(2**63 - 1) round up and overflow).
* **number**: at most `MAX_DIGITS` (17, float64's round-trip precision) significant
  digits, written without an exponent (llguidance's bounded number has none): an
  `anyOf` of tiers, each with at most `d` decimals (`multipleOf: 1e-d`) and a magnitude
  of at most `10**(17 - d)`, for `d` in `DECIMAL_TIERS`. Ten decimals is the finest step
  llguidance converts exactly (it refuses `multipleOf: 1e-11` and below).
* **string**: `maxLength` `MAX_STRING_LENGTH` (16,384 characters, ~4,000 tokens: a file
  an agent's tool call writes still fits; a longer value outruns the context of the
  small models a local server runs).
* **array**: `maxItems` `MAX_ARRAY_ITEMS` (1,024: each item costs at least two tokens,
  so a longer array overruns any answer budget anyway); llguidance unrolls `maxItems`
  into grammar nodes, 1,024 of them compile in about a millisecond.
* **any JSON** (`{}`, JSON mode's values, arrays without `items`): a bounded "any JSON"
  definition (`$defs/pomar_bounded_json`) with the caps above; the keys of map-like
  objects (no `properties`) are at most `MAX_KEY_LENGTH` characters.

A bound the schema gives itself is kept where it is tighter (an integer's `minimum` /
`maximum` are clamped to int64). Nothing here makes a satisfiable schema unsatisfiable:
a cap that would contradict the schema's own lower bound (a `minLength` above the cap,
a `minimum` beyond int64) is left off, and `bounded_schema` falls back to the schema as
given when llguidance refuses the rewritten one. Not capped: the keys of objects that
list `properties` (an extra key's pattern would intersect the listed properties'
schemas), and the number of an object's keys.
"""

from __future__ import annotations

import decimal
import functools
import json
import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

logger = logging.getLogger(__name__)

INT64_BOUND = 2**63 - 1024
"""Largest integer magnitude: the largest float64 below 2**63 (bounds are read as float64)."""

MAX_DIGITS = 17
"""Significant digits of a number: as many as a float64 needs to round-trip."""

DECIMAL_TIERS = (0, 5, 10)
"""Decimals allowed in each number tier; a tier with `d` decimals has magnitude <= 10**(17 - d)."""

MAX_STRING_LENGTH = 16_384
"""Characters in a string without its own `maxLength`."""

MAX_ARRAY_ITEMS = 1_024
"""Items in an array without its own `maxItems`."""

MAX_KEY_LENGTH = 256
"""Characters in a key of a map-like object (one that lists no `properties`)."""

ANY_JSON = "pomar_bounded_json"
"""The `$defs` entry holding bounded "any JSON"."""

_ANY_REF = f"#/$defs/{ANY_JSON}"
_KEY_PATTERN = f"^[\\s\\S]{{0,{MAX_KEY_LENGTH}}}$"

# where subschemas live, by shape; `not` / `if` are left alone (a cap inside `not`
# would widen the schema)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "contains")
# keywords after which a node gets no caps of its own: a finite set of values, or one
# combined with other schemas (its branches and targets are capped instead)
_NO_OWN_CAPS = frozenset({"enum", "const", "$ref", "not", "if", "anyOf", "oneOf", "allOf"})
# keywords that say nothing about the value: a node with only these is "any JSON"
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
     "writeOnly"}
)  # fmt: skip
# keywords that stay on a node split into an `anyOf` (they describe the document)
_DOCUMENT = frozenset({"$defs", "definitions", "$schema", "$id", "$anchor", "x-guidance"})


def bounded_schema(schema: dict[str, Any], options: JsonCompileOptions) -> dict[str, Any]:
    """`bound_schema(schema)`, or `schema` itself where llguidance refuses the rewrite.

    `options` are the JSON compile options the grammar will use. The check compiles the
    rewritten schema once without a tokenizer (2-10 ms); verdicts are cached, since
    clients send the same schema request after request. A `propertyNames` that only says
    what JSON already guarantees (keys are strings; zod's `z.record` writes it, Claude
    Code's tools carry it) is dropped first: llguidance does not implement the keyword.
    """
    schema = _without_string_key_names(schema)
    bounded = bound_schema(schema)
    try:
        error = _refusal(json.dumps(bounded, sort_keys=True), json.dumps(options, sort_keys=True))
    except (TypeError, ValueError) as exc:  # not JSON: the schema's own error follows
        error = str(exc)
    if error:
        # the schema's own error (if any) is reported when it is compiled as given
        logger.debug("JSON caps left off (%s)", error.strip().splitlines()[0])
        return schema
    return bounded


def _without_string_key_names(node: Any) -> Any:
    """Schema `node` without `propertyNames` that allow every string key (`{}`, `true`, or
    `{"type": "string"}`, annotations aside), in it and in the schemas it holds."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            out[key] = {n: _without_string_key_names(sub) for n, sub in node[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            out[key] = [_without_string_key_names(sub) for sub in node[key]]
    for key in _SCHEMA_VALUES:
        if key in node:
            out[key] = _without_string_key_names(node[key])
    names = node.get("propertyNames")
    if isinstance(names, dict):
        rest = {k: v for k, v in names.items() if k not in _ANNOTATIONS}
        if rest in ({}, {"type": "string"}):
            del out["propertyNames"]
    elif names is True:
        del out["propertyNames"]
    return out


@functools.lru_cache(maxsize=256)
def _refusal(schema_json: str, options_json: str) -> str:
    """llguidance's error for a schema, or "" when it compiles."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema_json, defaults=json.loads(options_json)
    )
    return str(llguidance.LLMatcher.validate_grammar(grammar))


def bound_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with caps on integers, numbers, strings, arrays and any-JSON values."""
    walk = _Walk(any_allowed=True)
    out = walk.node(schema, root=True)
    if walk.nested_id:
        # `#/$defs/...` would resolve against a nested `$id`, not the root: no any-JSON refs
        walk = _Walk(any_allowed=False)
        out = walk.node(schema, root=True)
    if not isinstance(out, dict):
        return schema
    if walk.any_used:
        out["$defs"] = {**out.get("$defs", {}), ANY_JSON: _any_json()}
    return out


class _Walk:
    """One rewrite of a schema; notes whether the any-JSON definition is referenced."""

    def __init__(self, any_allowed: bool) -> None:
        self.any_allowed = any_allowed
        self.any_used = False
        self.nested_id = False

    def node(self, node: Any, root: bool = False) -> Any:
        if node is True:
            return self._any() if self.any_allowed else node
        if not isinstance(node, dict):
            return node
        if not root and "$id" in node:
            self.nested_id = True
        out = self._children(node)
        keys = set(node)
        if not keys - _ANNOTATIONS - _DOCUMENT:
            # `{}`: any JSON value
            return {**out, **self._any()} if self.any_allowed else out
        types = _types(node)
        if types is None or keys & _NO_OWN_CAPS:
            return out
        if "number" in types:
            return self._split_number(out, types)
        return self._capped(out, types)

    def _children(self, node: dict[str, Any]) -> dict[str, Any]:
        out = dict(node)
        for key in _SCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                out[key] = {name: self.node(sub) for name, sub in node[key].items()}
        for key in _SCHEMA_LISTS:
            if isinstance(node.get(key), list):
                out[key] = [self.node(sub) for sub in node[key]]
        for key in _SCHEMA_VALUES:
            if key in node and not isinstance(node[key], list):
                out[key] = self.node(node[key])
        return out

    def _split_number(self, node: dict[str, Any], types: list[str]) -> dict[str, Any]:
        """A number node as an `anyOf` of its tiers (and its other types, capped)."""
        outer = {k: v for k, v in node.items() if k in _DOCUMENT or k in _ANNOTATIONS}
        body = {k: v for k, v in node.items() if k not in outer}
        tiers = number_tiers({**body, "type": "number"})
        if tiers is None:  # the schema's own bounds lie beyond 17 digits: left as given
            tiers = [{**body, "type": "number"}]
        rest = [t for t in types if t not in ("number", "integer")]  # number covers integer
        if rest:
            tiers.append(self._capped({**body, "type": rest[0] if len(rest) == 1 else rest}, rest))
        if len(tiers) == 1:
            return {**outer, **tiers[0]}
        return {**outer, "anyOf": tiers}

    def _capped(self, node: dict[str, Any], types: Iterable[str]) -> dict[str, Any]:
        """`node` with the caps of its (non-number) types; their keywords do not interact."""
        kinds = set(types)
        out = dict(node)
        if "integer" in kinds:
            out = _clamped(out, INT64_BOUND) or out
        # a cap below the schema's own minimum would leave no value: left off then
        short = _at_most(out.get("minLength", 0), MAX_STRING_LENGTH)
        if "string" in kinds and "maxLength" not in out and short:
            out["maxLength"] = MAX_STRING_LENGTH
        if "array" in kinds:
            if "maxItems" not in out and _at_most(out.get("minItems", 0), MAX_ARRAY_ITEMS):
                out["maxItems"] = MAX_ARRAY_ITEMS
            if "items" not in out and self.any_allowed:
                out["items"] = self._any()
        if "object" in kinds:
            out = self._object(out)
        return out

    def _object(self, node: dict[str, Any]) -> dict[str, Any]:
        extra = node.get("additionalProperties", True)
        if extra is False or not self.any_allowed:
            return node
        if extra is True:
            extra = self._any()
        listed = any(k in node for k in ("properties", "patternProperties"))
        if listed:
            # extra values are capped; extra keys are not (see the module docstring)
            return {**node, "additionalProperties": extra}
        # a map: every key through one length-capped pattern instead
        return {**node, "patternProperties": {_KEY_PATTERN: extra}, "additionalProperties": False}

    def _any(self) -> dict[str, Any]:
        self.any_used = True
        return {"$ref": _ANY_REF}


def number_tiers(node: dict[str, Any]) -> list[dict[str, Any]] | None:
    """`node` (a `number` schema) as tiers of at most `MAX_DIGITS` significant digits.

    With the node's own `multipleOf` (which already fixes the decimals) there is one
    tier, its magnitude capped by those decimals. Tiers that hold no value of the node
    (its bounds beyond the tier, or no multiple of the tier's step between them), or
    that add nothing to a tier with more decimals, are left out; None when none is left.
    """
    if "multipleOf" in node:
        step = _decimal(node["multipleOf"])
        if step is None or step <= 0:
            return None
        decimals = max(0, -int(step.normalize().as_tuple().exponent))
        tier = _clamped(node, 10 ** max(0, MAX_DIGITS - decimals), step)
        return [tier] if tier else None
    tiers = []
    for decimals in DECIMAL_TIERS:
        tier = _clamped(node, 10 ** (MAX_DIGITS - decimals), decimal.Decimal(10) ** -decimals)
        if tier is not None:
            tier["multipleOf"] = float(f"1e-{decimals}") if decimals else 1
            tiers.append(tier)
    # a tier as wide as one with more decimals adds nothing
    kept = [
        tier
        for i, tier in enumerate(tiers)
        if not any(_range(tier) == _range(later) for later in tiers[i + 1 :])
    ]
    return kept or None


def _any_json() -> dict[str, Any]:
    """Any JSON value, with every cap of this module."""
    ref = {"$ref": _ANY_REF}
    return {
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            *(number_tiers({"type": "number"}) or []),
            {"type": "string", "maxLength": MAX_STRING_LENGTH},
            {"type": "array", "items": ref, "maxItems": MAX_ARRAY_ITEMS},
            {
                "type": "object",
                "patternProperties": {_KEY_PATTERN: ref},
                "additionalProperties": False,
            },
        ]
    }


def _types(node: dict[str, Any]) -> list[str] | None:
    kind = node.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return list(kind)
    return None


def _clamped(
    node: dict[str, Any], limit: int, step: decimal.Decimal | None = None
) -> dict[str, Any] | None:
    """`node` with `minimum` / `maximum` within ±limit; None if that leaves no value.

    With `step`, a value must also be a multiple of it. None too when the node's bounds
    are not numbers (draft-4 boolean exclusives): such a node is left as given.
    """
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    if not all(k not in node or _is_number(node[k]) for k in keys):
        return None
    low: float = max(node.get("minimum", -limit), -limit)
    high: float = min(node.get("maximum", limit), limit)
    ex_low: float | None = node.get("exclusiveMinimum")
    ex_high: float | None = node.get("exclusiveMaximum")
    # the exclusive bounds, where tighter, make the range open at that end
    open_low, open_high = (
        ex_low is not None and ex_low >= low,
        ex_high is not None and ex_high <= high,
    )
    lowest = ex_low if ex_low is not None and open_low else low
    highest = ex_high if ex_high is not None and open_high else high
    if lowest > highest or (lowest == highest and (open_low or open_high)):
        return None
    if step is not None and not _has_multiple(lowest, highest, step, open_low, open_high):
        return None
    return {**node, "minimum": low, "maximum": high}


def _has_multiple(
    low: float, high: float, step: decimal.Decimal, open_low: bool, open_high: bool
) -> bool:
    """Whether a multiple of `step` lies between `low` and `high` (exact decimal arithmetic)."""
    lo, hi = _decimal(low), _decimal(high)
    assert lo is not None and hi is not None
    with decimal.localcontext() as context:
        context.prec = 400  # float64 bounds span 10**-324 .. 10**308
        first = (lo / step).to_integral_value(rounding=decimal.ROUND_CEILING) * step
        last = (hi / step).to_integral_value(rounding=decimal.ROUND_FLOOR) * step
        first += step if open_low and first == lo else 0
        last -= step if open_high and last == hi else 0
        return first <= last


def _range(node: dict[str, Any]) -> tuple[Any, Any]:
    return node["minimum"], node["maximum"]


def _decimal(value: Any) -> decimal.Decimal | None:
    """A JSON number as an exact decimal (floats by their shortest repr); None if not one."""
    return decimal.Decimal(repr(value)) if _is_number(value) and math.isfinite(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_most(value: Any, cap: int) -> bool:
    return _is_number(value) and bool(value <= cap)
