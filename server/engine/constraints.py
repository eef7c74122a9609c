"""Grammar-constrained decoding: JSON mode, JSON schemas and tool calls, with llguidance.

Why llguidance (compared on this project's needs: per-request schemas, two engines, CPU):

* **llguidance** compiles a JSON schema or a Lark grammar lazily (an Earley parser over
  a lexer of derivative-based regexes), so a new schema costs ~1 ms, not a vocabulary
  walk; the per-tokenizer set-up (~0.5 s for a 49k vocabulary) is done once per model
  and cached. Its packed int32 bitmask is exactly our `TokenConstraint` contract, it
  runs on the CPU with no torch or GPU dependency, wraps HF fast tokenizers directly,
  and its Lark dialect inlines JSON schemas (`%json {...}`) and lazy lexemes — which is
  what a tool-call grammar ("free text, or `<tool_call>` + a valid call") needs.
  Measured here: 0.1-0.4 ms per mask on the tiny and SmolLM2 vocabularies.
* outlines-core builds a token-level index of the whole vocabulary per schema (seconds
  for large schemas, paid on every new request schema) and has no CFG for tool calls.
* xgrammar is fast after a per-schema compile step, but its CPU path and mask layout are
  tied to its own torch helpers; the JSON + free-text-trigger tool grammar needs its
  structural-tag API, which llguidance covers with plain Lark.
* lm-format-enforcer walks a character-level parser over the token trie in Python
  every step: simple to integrate, but slow on large vocabularies and weaker on schema
  coverage (no `$ref` recursion guarantees, loose `anyOf`).

JSON is generated compactly: no free whitespace (a weak model can otherwise pad with
newlines until it runs out of tokens) and `json.dumps`-style `", "` / `": "` separators,
the spacing models have seen most.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from server.engine.base import TokenConstraint
from server.errors import InvalidRequest

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

#: llguidance JSON options: compact output with json.dumps' separators
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

# JSON-schema keywords that hold subschemas, by shape (strict mode rewrites only these)
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_SCHEMA_LISTS = frozenset({"anyOf", "allOf", "oneOf", "prefixItems"})
_SCHEMA_VALUES = frozenset({"items", "additionalProperties", "not", "if", "then", "else"})

ConstraintFactory = Callable[[], TokenConstraint]


class GrammarConstraint(TokenConstraint):
    """One completion's grammar state: an `llguidance.LLMatcher` and its mask buffer.

    Once the grammar is complete only end-of-turn ids are allowed; `advance` after an
    end-of-turn id is a no-op (MLX's pipelined `generate_step` computes one step past
    the token that ends the completion).
    """

    def __init__(self, matcher: Any, eos_ids: frozenset[int], vocab_size: int) -> None:
        import llguidance.numpy as llnp
        import numpy as np

        self._matcher = matcher
        self._eos = eos_ids
        self._fill = llnp.fill_next_token_bitmask
        self._mask = llnp.allocate_token_bitmask(1, vocab_size)
        self._eos_mask = np.zeros_like(self._mask)
        bits = self._eos_mask.view(np.uint32)  # bit 31 does not fit a positive int32
        for token in eos_ids:
            bits[0, token // 32] |= np.uint32(1 << (token % 32))
        self._done = False

    def bitmask(self) -> Any:
        if self._done:
            return self._eos_mask
        self._fill(self._matcher, self._mask)
        return self._mask

    def advance(self, token: int) -> None:
        if self._done:
            return
        if token in self._eos:
            self._done = True
            return
        if not self._matcher.consume_token(token):
            # the mask forbade this token: a backend bug, not a client error
            raise RuntimeError(f"constrained decoding failed: {self._matcher.get_error()}")


@dataclass(frozen=True)
class Grammar:
    """A grammar in llguidance's serialized form, and the request field it came from."""

    text: str
    #: the request parameter named in a 400 when the grammar does not compile
    param: str


class GrammarCompiler:
    """Compiles grammars for one tokenizer; the llguidance tokenizer is built once."""

    def __init__(self, ll_tokenizer: Any, eos_ids: frozenset[int]) -> None:
        self._tokenizer = ll_tokenizer
        self._eos = eos_ids

    def compile(self, grammar: Grammar) -> ConstraintFactory:
        """A factory of fresh constraints, or a 400 naming `grammar.param` if invalid.

        The grammar is compiled once here; each completion gets a copy of the matcher.
        """
        import llguidance

        prototype = llguidance.LLMatcher(self._tokenizer, grammar.text, log_level=0)
        if prototype.is_error():
            raise InvalidRequest(
                f"Invalid or unsupported schema: {_first_line(prototype.get_error())}",
                param=grammar.param,
            )
        return GrammarFactory(prototype, self._eos, self._tokenizer.vocab_size, grammar)


@dataclass(frozen=True)
class GrammarFactory:
    """Makes a fresh constraint per completion from a compiled grammar. It keeps the
    grammar's source, so an engine in another process (server.engine.runner) compiles the
    same grammar where the logits are."""

    prototype: Any
    eos: frozenset[int]
    vocab: int
    grammar: Grammar

    def __call__(self) -> TokenConstraint:
        return GrammarConstraint(self.prototype.deep_copy(), self.eos, self.vocab)


# per tokenizer (dropped with it), then per end-of-turn set
_compilers: weakref.WeakKeyDictionary[Any, dict[frozenset[int], GrammarCompiler]] = (
    weakref.WeakKeyDictionary()
)
_compilers_lock = threading.Lock()


def compiler_for(hf_tokenizer: Any, eos_ids: frozenset[int], param: str) -> GrammarCompiler:
    """The model's compiler, cached per tokenizer (building it walks the vocabulary).

    A tokenizer llguidance cannot read (a slow, pure-Python one) is a 400 naming `param`.
    """
    with _compilers_lock:
        compilers = _compilers.setdefault(hf_tokenizer, {})
        compiler = compilers.get(eos_ids)
        if compiler is None:
            import llguidance.hf

            try:
                ll_tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, eos_token=sorted(eos_ids))
            except ValueError as exc:
                raise InvalidRequest(
                    f"This model's tokenizer does not support constrained decoding ({exc}).",
                    param=param,
                ) from None
            compiler = GrammarCompiler(ll_tokenizer, eos_ids)
            compilers[eos_ids] = compiler
        return compiler


# --- grammars ----------------------------------------------------------------------


def json_object_grammar(param: str = "response_format") -> Grammar:
    """Any JSON object (OpenAI's JSON mode)."""
    return json_schema_grammar({"type": "object"}, strict=False, param=param)


def json_schema_grammar(
    schema: dict[str, Any], *, strict: bool, param: str = "response_format"
) -> Grammar:
    """Output that validates against `schema`.

    `strict` follows OpenAI's strict mode as far as the output goes: an object schema
    that does not say otherwise allows no properties beyond those it lists.
    """
    import llguidance

    from server.engine.json_bounds import bounded_schema

    schema = strict_schema(schema) if strict else schema
    # numbers, strings and arrays capped, so a weak model cannot run away in one value
    schema = bounded_schema(schema, JSON_OPTIONS)
    try:
        text = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid schema: {exc}", param=param) from None
    return Grammar(text, param)


ToolMode = Literal["auto", "required"]


@dataclass(frozen=True)
class CustomInput:
    """A custom tool's input: free text, or text a Lark grammar or a regex accepts."""

    syntax: Literal["text", "lark", "regex"] = "text"
    definition: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name and the JSON schema of its arguments.

    `custom`: a custom tool, whose call carries free-form input (`parameters` is then
    the one-string-parameter function the JSON formats write it as).
    """

    name: str
    parameters: dict[str, Any]
    strict: bool = False
    custom: CustomInput | None = None


def strict_schema(schema: Any) -> Any:
    """A copy of `schema` where objects without `additionalProperties` get `false`."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strict_schema(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = strict_schema(value)
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def inline_json(schema: dict[str, Any]) -> str:
    """A schema for Lark's `%json`, with our JSON options (x-guidance is per schema).

    Values are capped as in `json_schema_grammar` (`server.engine.json_bounds`).
    """
    from server.engine.json_bounds import bounded_schema

    schema = bounded_schema(schema, JSON_OPTIONS)
    return json.dumps({**schema, "x-guidance": {**JSON_OPTIONS, **schema.get("x-guidance", {})}})


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"
