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

Hermes calls stream argument by argument (`chatfmt.tools.ToolCallParser`); the other
formats are read as whole blocks (`BlockParser`): text streams until a call begins, the
calls come out once their block is complete. Streamed and whole parsing give the same
events either way.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chatfmt.callblocks import READERS, Calls, json_call
from chatfmt.tools import (
    ArgumentsDelta,
    CallStart,
    Event,
    ParsedMessage,
    TextDelta,
    ToolCallParser,
    new_call_id,
    partial_suffix,
)


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
    """Splits streamed model text into text and call events (see `chatfmt.tools`)."""

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


class BlockParser:
    """Text passes through until the format's calls begin; the calls are read whole.

    A block that does not parse as calls to offered functions is given back as text.
    """

    def __init__(
        self,
        fmt: ToolFormat,
        names: Sequence[str],
        schemas: Mapping[str, dict[str, Any]],
        custom: Collection[str] = (),
    ) -> None:
        self._fmt = fmt
        self._names = frozenset(names)
        self._custom = frozenset(custom)
        self._schemas = schemas
        self._pending = ""
        self._block: str | None = None  # the calls' text once they began
        self._seen_text = False
        self.calls = 0

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._block is not None:
            self._block += text
            self._close_blocks(events)
            return events
        self._pending += text
        at = self._open_at(self._pending)
        if at is None:
            keep = self._hold(self._pending)
            # trailing blanks wait too: dropped if calls follow, kept if text does
            cut = len(self._pending[: len(self._pending) - keep].rstrip())
            if self._pending[:cut].strip():
                self._seen_text = True
            if cut:
                events.append(TextDelta(self._pending[:cut]))
                self._pending = self._pending[cut:]
            return events
        before, self._block, self._pending = self._pending[:at], self._pending[at:], ""
        if before.strip():
            events.append(TextDelta(before.rstrip()))
        self._close_blocks(events)
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._block is not None:
            block, self._block = self._block, None
            if block.strip():
                self._read_block(block, events)
        elif self._pending:
            events.append(TextDelta(self._pending))
        self._pending = ""
        return events

    def _open_at(self, text: str) -> int | None:
        """Where the calls begin in `text`, or None."""
        fmt = self._fmt
        for marker in (fmt.open, *fmt.markers[:1]):
            if marker and (at := text.find(marker)) >= 0:
                return at
        if fmt.name == "llama3_json" and not self._seen_text:
            stripped = text.lstrip()
            if stripped.startswith("{"):
                return len(text) - len(stripped)
        return None

    def _hold(self, text: str) -> int:
        """How much of the end of `text` may still become the open marker."""
        fmt = self._fmt
        hold = max(partial_suffix(text, m) for m in (fmt.open, *fmt.markers[:1]) if m)
        if fmt.name == "llama3_json" and not self._seen_text and not text.strip():
            hold = len(text)  # blank so far: a bare JSON call may still follow
        return hold

    def _close_blocks(self, events: list[Event]) -> None:
        """Qwen3-Coder blocks end at their close tag; read each one as it completes."""
        if not self._fmt.close:
            return
        assert self._block is not None
        while (end := self._block.find(self._fmt.close)) >= 0:
            end += len(self._fmt.close)
            block, self._block = self._block[:end], self._block[end:]
            self._read_block(block, events)
            rest = self._block
            stripped = rest.lstrip()
            if stripped.startswith(self._fmt.open):
                self._block = stripped  # the next call
                continue
            if self._fmt.open.startswith(stripped):
                return  # blank, or the start of the next open tag: wait
            # text after the calls is content again
            self._block = None
            events.append(TextDelta(rest))
            return

    def _read_block(self, block: str, events: list[Event]) -> None:
        calls = READERS[self._fmt.name](block, self._fmt, self._schemas)
        if calls is not None:
            calls = _custom_inputs(calls, self._custom)
        if calls is None or not calls or any(name not in self._names for name, _ in calls):
            events.append(TextDelta(block))
            return
        for name, arguments in calls:
            index = self.calls
            self.calls += 1
            events.append(CallStart(index, new_call_id(), name))
            events.append(ArgumentsDelta(index, arguments))


class BareJsonCalls:
    """A turn that is only a JSON call, bare or fenced, is a call (`tool_choice: "auto"`).

    Small models offered tools without being forced often answer with the call as a
    JSON object — `{"name": "get_weather", "arguments": {...}}`, or the same in a
    ```` ```json ```` fence — instead of their format's tags (Qwen2.5-Coder-0.5B does,
    greedily). Text that may still be such a turn is held back to the end, then read as
    calls when it is one (offered names, object arguments), else given to `inner`.
    """

    def __init__(
        self, inner: CallParser, names: Sequence[str], custom: Collection[str] = ()
    ) -> None:
        self._inner = inner
        self._names = frozenset(names)
        self._custom = frozenset(custom)
        self._held: str | None = ""  # None once the turn is known not to be bare JSON
        self._bare = 0

    @property
    def calls(self) -> int:
        return self._inner.calls + self._bare

    def feed(self, text: str) -> list[Event]:
        if self._held is None:
            return self._inner.feed(text)
        self._held += text
        if _may_be_bare_json(self._held.lstrip()):
            return []
        held, self._held = self._held, None
        return self._inner.feed(held)

    def finish(self) -> list[Event]:
        held, self._held = self._held, None
        if held and held.strip():
            calls = _read_bare(held, self._names)
            if calls:
                calls = _custom_inputs(calls, self._custom)
            if calls:
                events: list[Event] = []
                for name, arguments in calls:
                    events += [CallStart(self._bare, new_call_id(), name)]
                    events += [ArgumentsDelta(self._bare, arguments)]
                    self._bare += 1
                return events
            return self._inner.feed(held) + self._inner.finish()
        return self._inner.finish() if held is None else [TextDelta(held)] if held else []


_FENCES = ("```json\n", "```\n")


def _may_be_bare_json(text: str) -> bool:
    """Whether a turn beginning with `text` (blank stripped) may be only JSON calls."""
    if not text or text.startswith("{"):
        return True
    for fence in _FENCES:
        if fence.startswith(text):
            return True
        if text.startswith(fence):
            return _may_be_bare_json(text[len(fence) :].lstrip())
    return False


def _read_bare(text: str, names: frozenset[str]) -> Calls:
    """The calls of a bare or fenced JSON turn (one object or a list), or None."""
    body = text.strip()
    for fence in _FENCES:
        if body.startswith(fence) and body.endswith("```"):
            body = body[len(fence) : -3].strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [json_call(item, "arguments") for item in items]
    if not calls or any(c is None or c[0] not in names for c in calls):
        return None
    return [c for c in calls if c is not None]


def _custom_inputs(calls: list[tuple[str, str]], custom: frozenset[str]) -> Calls:
    """Custom tools' calls read as one-string functions, as their raw `input`.

    A custom call whose arguments are not `{"input": <string>}` makes the block text.
    """
    out: list[tuple[str, str]] = []
    for name, arguments in calls:
        if name in custom:
            value = json.loads(arguments)
            if not (isinstance(value, dict) and isinstance(value.get("input"), str)):
                return None
            arguments = value["input"]
        out.append((name, arguments))
    return out


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
