"""The grammar of a chat completion's output: tool calls in the model's format, a JSON
answer, and a reasoning block before either.

One Lark grammar (llguidance's dialect) per request. Markers that are single special
tokens in the model's vocabulary (Qwen's `<tool_call>`, Mistral's `[TOOL_CALLS]`, Qwen3's
`</think>`) are forced as those tokens (`<[id]>`): llguidance will not spell a special
token's text out of ordinary tokens, and the model never writes it that way. Other
markers are text. Free text is a regex lexeme, which cannot contain a special token; a
text marker ends free text through a lazy lexeme (the shortest text up to the marker).

A custom tool's input is raw text in the Hermes and Qwen3-Coder formats: its Lark grammar
(or regex) is a named sub-grammar (`@custom_i`, llguidance's grammar list) between the
call's opening and `\n</function>` (Qwen3-Coder: `\n</parameter>`); free text is the
shortest text up to that marker. The JSON formats write the input as the JSON string
`input`: a regex becomes its `pattern`; a Lark grammar cannot be enforced inside a JSON
string, so the input is any string there (logged).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatfmt.reasoning import ReasoningFormat
from chatfmt.toolcalls import ToolFormat
from server.engine.constraints import (
    CustomInput,
    Grammar,
    ToolMode,
    ToolSpec,
    inline_json,
    strict_schema,
)

log = logging.getLogger(__name__)

#: the formats that write a custom tool's input raw (the others: as a JSON string)
RAW_CUSTOM_FORMATS = frozenset({"hermes", "qwen3_coder"})


@dataclass(frozen=True)
class Marks:
    """How the grammar spells markers: special tokens by id, anything else as text."""

    #: marker text -> id, for markers that are one special token of the vocabulary
    ids: Mapping[str, int] = field(default_factory=dict)

    def __call__(self, text: str) -> str:
        token = self.ids.get(text)
        return f"<[{token}]>" if token is not None else _lit(text)

    def special(self, text: str) -> bool:
        """Whether `text` is forced as one special token."""
        return text in self.ids


def special_marks(added_vocab: Mapping[str, int], markers: Sequence[str]) -> Marks:
    """The markers that are added (special) tokens of the vocabulary, with their ids."""
    return Marks({m: added_vocab[m] for m in markers if m in added_vocab})


@dataclass(frozen=True)
class ToolGrammar:
    """What the calls may be: the functions, the mode, and whether several may come."""

    tools: Sequence[ToolSpec]
    mode: ToolMode
    parallel: bool
    fmt: ToolFormat


@dataclass(frozen=True)
class Thinking:
    """A reasoning block before the constrained output."""

    fmt: ReasoningFormat
    #: the generation prompt opened the block: the output starts inside it
    inside: bool


def output_grammar(
    *,
    marks: Marks,
    tools: ToolGrammar | None = None,
    answer: dict[str, Any] | None = None,
    answer_strict: bool = False,
    thinking: Thinking | None = None,
) -> Grammar:
    """The grammar of one completion.

    `tools` with mode `required`: calls only. `auto`: free text — or, given `answer`, a
    JSON answer — or calls (a call once begun must be valid). No tools: the `answer`.
    `thinking`: the model's reasoning block may come first (must, when `inside`).
    """
    rules: list[str] = []
    if answer is not None:
        schema = strict_schema(answer) if answer_strict else answer
        rules.append(f"answer: %json {inline_json(schema)}")
    if tools is None:
        assert answer is not None, "a grammar needs tools or an answer schema"
        body = "answer"
    else:
        rules += _call_rules(tools, marks)
        calls = "calls"
        if tools.mode == "required":
            body = calls
        elif answer is not None:
            body = f"answer | {calls}"
        else:
            body, more = _free_text_or_calls(tools, marks)
            rules += more
    rules.append(f"body: {body}")
    if thinking is None:
        rules.insert(0, "start: body")
    else:
        rules.insert(0, "start: think WS? body" if thinking.inside else "start: (think WS?)? body")
        rules += _think_rules(thinking, marks)
        rules.append(r"WS: /[ \t\n]+/")
    rules.append(r"TEXT: /(.|\n)*/")
    text = "\n".join(["%llguidance {}", *rules]) + "\n"
    import llguidance

    param = "tools" if tools else "response_format"
    subs = custom_grammars(tools) if tools else []
    if subs:
        grammars = [{"lark_grammar": text}, *subs]
        return Grammar(json.dumps({"grammars": grammars}), param)
    return Grammar(llguidance.LLMatcher.grammar_from_lark(text), param)


def custom_grammars(tools: ToolGrammar) -> list[dict[str, Any]]:
    """The named sub-grammars (`custom_i`) of the custom tools whose input is raw text."""
    if tools.fmt.name not in RAW_CUSTOM_FORMATS:
        return []
    return [
        {"name": f"custom_{i}", "lark_grammar": custom_lark(tool.custom)}
        for i, tool in enumerate(tools.tools)
        if tool.custom is not None and tool.custom.syntax != "text"
    ]


def custom_lark(custom: CustomInput) -> str:
    """A custom tool's grammar as a Lark grammar (a regex as `start: /.../`)."""
    if custom.syntax == "lark":
        return custom.definition
    import llguidance

    serialized = json.loads(llguidance.LLMatcher.grammar_from_regex(custom.definition))
    return str(serialized["grammars"][0]["lark_grammar"])


def _call_rules(spec: ToolGrammar, marks: Marks) -> list[str]:
    """`calls` and `call` in the format's own syntax, one `fn_i` per function."""
    fmt = spec.fmt
    rules = [f"fn: {' | '.join(f'fn_{i}' for i in range(len(spec.tools)))}"]
    for i, tool in enumerate(spec.tools):
        if tool.custom is not None:
            rules += _custom_rules(i, tool, fmt, marks)
            continue
        params = strict_schema(tool.parameters) if tool.strict else tool.parameters
        rules += _function_rules(i, tool.name, params, fmt, marks)
    if fmt.name in ("hermes", "qwen3_coder"):
        rules.append(f'call: {marks(fmt.open)} "\\n" fn "\\n" {marks(fmt.close)}')
        sep = '"\\n"'
    elif fmt.name == "llama3_json":
        rules.append("call: fn")
        sep = '"; "'
    elif fmt.name == "mistral":
        rules.append("call: fn")
        many = ' (", " fn)*' if spec.parallel else ""
        rules.append(f'calls: {marks(fmt.open)} "[" fn{many} "]"')
        return rules
    else:  # mistral_args: [TOOL_CALLS]name[ARGS]{...} per call
        rules.append("call: fn")
        sep = ""
    rules.append(f"calls: call ({sep} call)*" if spec.parallel else "calls: call")
    return rules


def _function_rules(
    i: int, name: str, params: dict[str, Any], fmt: ToolFormat, marks: Marks
) -> list[str]:
    if fmt.name == "qwen3_coder":
        return _xml_function_rules(i, name, params)
    if fmt.name == "mistral_args":
        args = f"%json {inline_json(params)}"
        return [f"fn_{i}: {marks(fmt.open)} {_lit(name)} {marks('[ARGS]')} {args}"]
    head = f'{{"name": {json.dumps(name)}, "{fmt.arguments_key}": '
    return [f"fn_{i}: {_lit(head)} %json {inline_json(params)} {_lit('}')}"]


def _custom_rules(i: int, tool: ToolSpec, fmt: ToolFormat, marks: Marks) -> list[str]:
    """A custom tool's call: raw input (Hermes, Qwen3-Coder) or the JSON string `input`."""
    custom = tool.custom
    assert custom is not None
    if fmt.name in RAW_CUSTOM_FORMATS:
        if fmt.name == "hermes":
            head, close = f"<function={tool.name}>\n", "\n</function>"
        else:
            head, close = f"<function={tool.name}>\n<parameter=input>\n", "\n</parameter>\n"
        tail = "" if fmt.name == "hermes" else f" {_lit('</function>')}"
        if custom.syntax == "text":
            return [
                f"fn_{i}: {_lit(head)} fn_{i}_input{tail}",
                f"fn_{i}_input[lazy]: TEXT {_lit(close)}",
            ]
        return [f"fn_{i}: {_lit(head)} @custom_{i} {_lit(close)}{tail}"]
    string: dict[str, Any] = {"type": "string"}
    if custom.syntax == "regex":
        string["pattern"] = f"^(?:{custom.definition})$"
    elif custom.syntax == "lark":
        log.warning(
            "custom tool %s: a Lark grammar cannot be enforced inside the %s format's JSON "
            "string; its input is any string",
            tool.name,
            fmt.name,
        )
    params = {**tool.parameters, "properties": {"input": string}}
    return _function_rules(i, tool.name, params, fmt, marks)


def _xml_function_rules(i: int, name: str, params: dict[str, Any]) -> list[str]:
    """Qwen3-Coder's `<function=NAME>` block: each listed parameter in schema order.

    String values are free text up to `</parameter>`; other values are JSON of their
    schema. Parameters not in `required` may be left out.
    """
    properties = params.get("properties") or {}
    required = set(params.get("required") or [])
    rules: list[str] = []
    parts = [_lit(f"<function={name}>\n")]
    for j, (key, schema) in enumerate(properties.items()):
        rule = f"p_{i}_{j}"
        head = _lit(f"<parameter={key}>\n")
        if isinstance(schema, dict) and schema.get("type") == "string":
            rules.append(f"{rule}_v[lazy]: TEXT {_lit(chr(10) + '</parameter>' + chr(10))}")
            rules.append(f"{rule}: {head} {rule}_v")
        else:
            value = inline_json(schema if isinstance(schema, dict) else {})
            rules.append(f"{rule}: {head} %json {value} {_lit(chr(10) + '</parameter>' + chr(10))}")
        parts.append(rule if key in required else f"{rule}?")
    parts.append(_lit("</function>"))
    return [f"fn_{i}: {' '.join(parts)}", *rules]


def _free_text_or_calls(spec: ToolGrammar, marks: Marks) -> tuple[str, list[str]]:
    """`auto` without an answer schema: text, or calls once their marker appears."""
    fmt = spec.fmt
    if fmt.name.startswith("mistral") and not marks.special(fmt.open):
        return "TEXT | calls", []  # (Mistral's tokenizers all have the special token)
    if fmt.name == "llama3_json":
        # a bare JSON turn is a call; any other text may not begin with "{"
        return "TEXT_NB | calls", [r"TEXT_NB: /(\s*[^{\s](.|\n)*)?/"]
    if marks.special(fmt.open):
        # free text cannot hold the special token: it ends where the token comes
        tail = " TEXT" if spec.parallel else ""
        return f"TEXT | TEXT calls{tail}", []
    # a text marker: the shortest text up to the marker, which then must open a call
    close = f'"\\n" fn "\\n" {marks(fmt.close)}' if fmt.close else "fn"
    rules = [f"call_head[lazy]: TEXT {marks(fmt.open)}", f"lazy_call: call_head {close}"]
    if spec.parallel:
        return "lazy_call* TEXT", rules
    return "TEXT | lazy_call", rules


def _think_rules(thinking: Thinking, marks: Marks) -> list[str]:
    fmt = thinking.fmt
    if marks.special(fmt.close):
        inner = f"think_text: TEXT {marks(fmt.close)}"
    else:
        inner = f"think_text[lazy]: TEXT {marks(fmt.close)}"
    opening = "think: think_text" if thinking.inside else f"think: {marks(fmt.open)} think_text"
    return [opening, inner]


def _lit(text: str) -> str:
    """A Lark string literal (JSON string escapes are valid Lark escapes)."""
    return json.dumps(text)
