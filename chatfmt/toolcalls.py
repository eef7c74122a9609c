"""Tool-call formats by model family: which one a model speaks, and how its calls read back.

Each family writes calls its own way, in the text its chat template teaches:

* ``hermes`` — Hermes, Qwen2.5, Qwen3 (and pomar's default for templates without tools):
  ``<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>``, one block per call;
* ``qwen3_coder`` — Qwen3-Coder's XML: ``<tool_call>\\n<function=NAME>\\n<parameter=P>\\n
  VALUE\\n</parameter>\\n…</function>\\n</tool_call>``;
* ``llama3_json`` — Llama 3.1-3.3: bare JSON ``{"name": …, "parameters": {…}}`` as the whole
  turn (optionally after ``<|python_tag|>``), several separated by ``; ``;
* ``mistral`` — ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]``, or, in the newer
  tokenizers with an ``[ARGS]`` token, ``[TOOL_CALLS]NAME[ARGS]{…}`` per call.

The format is read off the chat template (the text it renders tool calls with); a template
that does not take tools gets pomar's default (Hermes text in a system block, see
`chatfmt.tools`). Markers such as ``<tool_call>`` or ``[TOOL_CALLS]`` are often single
special tokens: the grammar forces them as tokens and the detokenizer shows them to the
parser (`ToolFormat.markers`), while `content` never carries them.

Hermes calls stream argument by argument (`chatfmt.callstream.ToolCallParser`); the other
formats are read as whole blocks (`chatfmt.blockparser.BlockParser`): text streams until
a call begins, the calls come out once their block is complete. Streamed and whole
parsing give the same events either way. `call_parser` picks the parser for a format.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chatfmt.blockparser import BareJsonCalls, BlockParser
from chatfmt.callstream import Event, ParsedMessage, ToolCallParser


@dataclass(frozen=True)
class ToolFormat:
    """One family's way of writing tool calls."""

    #: short name, as docs/tools.md lists them
    name: str
    #: what opens the model's calls ("" for a bare JSON turn)
    open: str
    #: what closes one call ("" when the turn's end closes the calls)
    close: str
    #: the marker strings the parser must see even when they are special tokens
    markers: tuple[str, ...]
    #: the key of the arguments object in a JSON call
    arguments_key: str = "arguments"


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>", ("<tool_call>", "</tool_call>"))
QWEN3_CODER = ToolFormat(
    "qwen3_coder", "<tool_call>", "</tool_call>", ("<tool_call>", "</tool_call>")
)
LLAMA3_JSON = ToolFormat("llama3_json", "", "", ("<|python_tag|>",), arguments_key="parameters")
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "", ("[TOOL_CALLS]",))
MISTRAL_ARGS = ToolFormat("mistral_args", "[TOOL_CALLS]", "", ("[TOOL_CALLS]", "[ARGS]"))

FORMATS = (HERMES, QWEN3_CODER, LLAMA3_JSON, MISTRAL, MISTRAL_ARGS)


def detect_format(template: str, takes_tools: bool, vocab: Mapping[str, int]) -> ToolFormat:
    """The tool-call format a model speaks, from its chat template and vocabulary.

    A template that does not take `tools` gets pomar's default (Hermes, described in a
    system block); so does one that takes tools in a way none of the families write.
    """
    if not takes_tools:
        return HERMES
    if "<function=" in template and "<parameter=" in template:
        return QWEN3_CODER
    if "[TOOL_CALLS]" in template:
        return MISTRAL_ARGS if "[ARGS]" in template or "[ARGS]" in vocab else MISTRAL
    if "<tool_call>" in template:
        return HERMES
    llama_headers = "<|start_header_id|>" in template
    if "<|python_tag|>" in template or (llama_headers and '"parameters"' in template):
        return LLAMA3_JSON
    return HERMES


class CallParser(Protocol):
    """Splits streamed model text into text and call events (see `chatfmt.callstream`)."""

    @property
    def calls(self) -> int:
        """Calls begun so far."""
        ...

    def feed(self, text: str) -> list[Event]:
        """Add model text; return the events it completes."""
        ...

    def finish(self) -> list[Event]:
        """The end of the completion: whatever is held back."""
        ...


def call_parser(
    fmt: ToolFormat,
    names: Sequence[str],
    schemas: Mapping[str, dict[str, Any]] | None = None,
    *,
    bare_json: bool = False,
    custom: Collection[str] = (),
    grammars: Collection[str] = (),
) -> CallParser:
    """A fresh parser for one completion in `fmt`, accepting calls to `names`.

    `schemas` (function name → parameters schema) types Qwen3-Coder's XML values.
    `bare_json` (for `tool_choice: "auto"`): a turn that is nothing but a JSON call,
    bare or in a code fence, is read as the call (see `BareJsonCalls`).
    `custom`: the custom tools among `names`, whose calls carry free-form input (see
    `custom_call_syntax`); their `ArgumentsDelta`s are that input, not JSON.
    `grammars`: the custom tools whose input a grammar holds: a bare JSON turn, written
    outside the grammar, never calls them (it stays text).
    """
    parser: CallParser
    if fmt.name == "hermes":
        parser = ToolCallParser(names, custom)
    else:
        parser = BlockParser(fmt, names, schemas or {}, custom)
    if bare_json and fmt.name != "llama3_json":  # Llama 3 calls are bare JSON already
        held = frozenset(grammars)
        parser = BareJsonCalls(parser, [n for n in names if n not in held], custom)
    return parser


def parse_calls(
    text: str,
    fmt: ToolFormat,
    names: Sequence[str],
    schemas: Mapping[str, dict[str, Any]] | None = None,
    *,
    bare_json: bool = False,
    custom: Collection[str] = (),
    grammars: Collection[str] = (),
) -> ParsedMessage:
    """Parse a whole completion in `fmt`."""
    parser = call_parser(fmt, names, schemas, bare_json=bare_json, custom=custom, grammars=grammars)
    parsed = ParsedMessage()
    parsed.add(parser.feed(text))
    parsed.add(parser.finish())
    return parsed


def prompt_tools(tools: Sequence[Mapping[str, Any]], fmt: ToolFormat) -> list[dict[str, Any]]:
    """Tools as the prompt shows them: function tools as given, a custom tool as a function.

    Chat templates and pomar's tool block describe functions; a custom tool
    (`{"type": "custom", "custom": {name, description, format}}`) is shown as a function
    of one string parameter, `input`, its description saying how the call is written
    in this format (`custom_call_syntax`) and the grammar its input follows.
    """
    out: list[dict[str, Any]] = []
    for tool in tools:
        if tool.get("type") != "custom":
            out.append(dict(tool))
            continue
        body = tool["custom"]
        name = body["name"]
        about = [body.get("description") or "", custom_call_syntax(name, fmt)]
        grammar = (body.get("format") or {}).get("grammar")
        if grammar:
            about.append(
                f"The input must follow this {grammar['syntax']} grammar:\n{grammar['definition']}"
            )
        input_schema = {"type": "string", "description": "The tool's free-form input."}
        function = {
            "name": name,
            "description": "\n\n".join(part for part in about if part),
            "parameters": {
                "type": "object",
                "properties": {"input": input_schema},
                "required": ["input"],
            },
        }
        out.append({"type": "function", "function": function})
    return out


def custom_call_syntax(name: str, fmt: ToolFormat) -> str:
    """How a custom tool's call is written in `fmt`, as the tool's description says it.

    Hermes (and pomar's default) writes the input raw, `<function=NAME>\nINPUT\n</function>`
    inside the call tags; Qwen3-Coder writes it raw as the `input` parameter; the JSON
    formats (Llama 3, Mistral) as the JSON string `input`.
    """
    if fmt.name == "hermes":
        return (
            "This is a custom tool: its input is free-form text, not JSON. Call it with "
            f"the input written raw:\n<tool_call>\n<function={name}>\n"
            "...the input...\n</function>\n</tool_call>"
        )
    if fmt.name == "qwen3_coder":
        return "This is a custom tool: its `input` parameter is free-form text."
    return "This is a custom tool: its `input` is free-form text, given as a JSON string."
