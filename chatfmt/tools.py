"""Tool calling in the Hermes / Qwen format: prompt rendering and output parsing.

A call is written as::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call; a custom tool's call (free-form input, see `custom_call_text`) is
written raw::

    <tool_call>
    <function=apply_patch>
    *** Begin Patch
    ...
    </function>
    </tool_call>

Models whose chat template takes `tools` get them through the
template; for the others the functions are described in a system-prompt block (the
text Qwen2.5's template uses), earlier calls are written back in the same format and
tool results go back as a user turn wrapped in `<tool_response>` tags. Decoding is
constrained to this format whenever tools are offered (see `server.engine.constraints`),
so the parser below only has to follow it, incrementally for streams.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

#: the tags around each call; the grammar puts a newline inside each tag, and between calls
OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
#: a custom tool's raw input sits between `<function=NAME>\n` and `\n</function>`
CUSTOM_CLOSE = "\n</function>"

_SYSTEM_BLOCK = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)

Message = dict[str, Any]


@functools.lru_cache(maxsize=64)
def template_takes_tools(template: str) -> bool:
    """Whether a Jinja chat template reads a `tools` variable (it has its own tool format).

    Cached: every rendered prompt asks, and parsing the template again took ~8 ms of a
    request's time to first token (the embedded model's, profiled on 2 cores).
    """
    import jinja2
    from jinja2 import meta

    try:
        parsed = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return False
    return "tools" in meta.find_undeclared_variables(parsed)


def new_call_id() -> str:
    """An id like OpenAI's `call_...`."""
    return f"call_{secrets.token_hex(12)}"


def call_text(name: str, arguments: str) -> str:
    """One call in the default format (arguments are the JSON text the client sent back)."""
    body = f'{{"name": {json.dumps(name)}, "arguments": {arguments or "{}"}}}'
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


def custom_call_text(name: str, text: str) -> str:
    """One custom tool call in the default format: its input raw, not JSON."""
    return f"{OPEN_TAG}\n<function={name}>\n{text}{CUSTOM_CLOSE}\n{CLOSE_TAG}"


def _history_call_text(call: Message) -> str:
    if call.get("type") == "custom":
        return custom_call_text(call["custom"]["name"], call["custom"]["input"])
    return call_text(call["function"]["name"], call["function"]["arguments"])


def render_messages(
    messages: Sequence[Message], tools: Sequence[Message] | None, *, native: bool
) -> list[Message]:
    """Messages ready for the chat template, tools included.

    `messages` are OpenAI-shaped dicts (`tool_calls` with JSON-string arguments, `tool`
    messages with `tool_call_id`); `tools` are OpenAI function tools, or None when the
    request offers none (or `tool_choice` is "none"). With `native`, the template gets
    Hugging Face's tool-use shapes and the caller passes `tools` to it; otherwise the
    conversation is rewritten into plain system / user / assistant turns.
    """
    if native:
        return _hf_messages(messages)
    out: list[Message] = []
    results: list[str] = []
    for message in messages:
        if message["role"] == "tool":
            results.append(f"<tool_response>\n{message.get('content') or ''}\n</tool_response>")
            continue
        if results:
            out.append({"role": "user", "content": "\n".join(results)})
            results = []
        calls = message.get("tool_calls") or []
        if message["role"] == "assistant" and calls:
            parts = [message.get("content") or ""]
            parts += [_history_call_text(c) for c in calls]
            message = {"role": "assistant", "content": "\n".join(p for p in parts if p)}
        out.append({k: v for k, v in message.items() if k in ("role", "content", "name")})
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    if tools:
        block = _SYSTEM_BLOCK.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _hf_messages(messages: Sequence[Message]) -> list[Message]:
    """OpenAI messages in the shape Hugging Face tool-use templates expect."""
    names: dict[str, str] = {}
    out: list[Message] = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            # a custom call reaches the template as a function of one string, `input`
            calls = [_as_function_call(c) for c in calls]
            message["tool_calls"] = [
                {
                    "id": c.get("id"),
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": _json_or_text(c["function"]["arguments"]),
                    },
                }
                for c in calls
            ]
            names.update({c.get("id") or "": c["function"]["name"] for c in calls})
        if message["role"] == "tool" and "name" not in message:
            name = names.get(message.get("tool_call_id") or "")
            if name:
                message["name"] = name
        message.setdefault("content", "")
        if message["content"] is None:
            message["content"] = ""
        out.append(message)
    return out


def _as_function_call(call: Message) -> Message:
    if call.get("type") != "custom":
        return call
    body = call["custom"]
    arguments = json.dumps({"input": body["input"]})
    return {**call, "type": "function", "function": {"name": body["name"], "arguments": arguments}}


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (TypeError, json.JSONDecodeError):
        return arguments


# --- parsing ------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """Plain assistant text."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call to `name` begins (its arguments follow as `ArgumentsDelta`s)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    """A piece of the JSON arguments of call `index`."""

    index: int
    text: str


Event = TextDelta | CallStart | ArgumentsDelta

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_.-]*)"\s*,\s*"arguments"\s*:\s*')
_CUSTOM_HEAD = re.compile(r"\s*<function=([A-Za-z0-9_.-]+)>\n")


@dataclass
class _Call:
    raw: str = ""
    index: int | None = None
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False
    args_done: bool = False
    #: a custom tool's call: raw input up to `CUSTOM_CLOSE`, not JSON arguments
    custom: bool = False


class ToolCallParser:
    """Splits streamed model text into plain text and tool calls, as it arrives.

    Text outside `<tool_call>` blocks passes through (held back only while it could be
    the start of the tag). Inside a block, the call is announced as soon as its name
    is known and its arguments stream out piece by piece. A block that does not follow
    the format, or names a function not offered, is given back as plain text.

    `custom` names the custom tools among `names`: their calls are
    `<function=NAME>\nINPUT\n</function>` blocks, and their `ArgumentsDelta`s carry the
    raw input (up to the first `\n</function>`).
    """

    def __init__(self, names: Sequence[str], custom: Collection[str] = ()) -> None:
        self._custom = frozenset(custom)
        self._names = frozenset(names) - self._custom
        self._pending = ""
        self._call: _Call | None = None
        self.calls = 0

    def feed(self, text: str) -> list[Event]:
        """Add model text; return the events it completes."""
        self._pending += text
        events: list[Event] = []
        # each scan reports whether it changed state (a tag found), so scan again
        while self._scan_text(events) if self._call is None else self._scan_call(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """The end of the completion: whatever is held back, as text.

        A call cut short (finish_reason "length") keeps the arguments it streamed, as
        OpenAI's do; one cut before its function was named, or an open tag cut after
        its second character, is dropped (under the grammar it could only have been a
        call). Blank text around calls is dropped too.
        """
        events: list[Event] = []
        call, rest = self._call, self._pending
        self._call, self._pending = None, ""
        if call is not None:
            if call.index is None and _HEAD.match(rest):  # names a function not offered
                events.append(TextDelta(call.raw + rest))
        elif rest.strip():
            tail = rest.strip()
            if not (len(tail) > 1 and OPEN_TAG.startswith(tail)):  # "<t...": a cut tag
                events.append(TextDelta(rest))
        elif rest and not self.calls:  # blank text stays only in a turn without calls
            events.append(TextDelta(rest))
        return events

    def _scan_text(self, events: list[Event]) -> bool:
        at = self._pending.find(OPEN_TAG)
        if at >= 0:
            if self._pending[:at].strip():
                events.append(TextDelta(self._pending[:at].rstrip()))
            self._call = _Call(raw=OPEN_TAG)
            self._pending = self._pending[at + len(OPEN_TAG) :]
            return True
        safe = self._pending[: len(self._pending) - partial_suffix(self._pending, OPEN_TAG)]
        # trailing blanks wait: dropped if a call follows, kept if text does
        cut = len(safe.rstrip())
        if cut:
            events.append(TextDelta(self._pending[:cut]))
            self._pending = self._pending[cut:]
        return False

    def _scan_call(self, events: list[Event]) -> bool:
        call = self._call
        assert call is not None
        if call.index is None:
            match = _CUSTOM_HEAD.match(self._pending)
            if match is not None and match.group(1) in self._custom:
                call.custom = True
            else:
                match = _HEAD.match(self._pending)
                if match is None or match.group(1) not in self._names:
                    return self._give_back(call, events)
            call.index = self.calls
            self.calls += 1
            events.append(CallStart(call.index, new_call_id(), match.group(1)))
            self._pending = self._pending[match.end() :]
        if call.custom and not call.args_done:
            if not self._scan_input(call, events):
                return False
        elif not call.args_done:
            skip, used = _scan_arguments(call, self._pending)
            if used > skip:
                events.append(ArgumentsDelta(call.index, self._pending[skip:used]))
            self._pending = self._pending[used:]
            if not call.args_done:
                return False
        at = self._pending.find(CLOSE_TAG)
        if at < 0:
            return False
        self._pending = self._pending[at + len(CLOSE_TAG) :]
        self._call = None
        return True

    def _scan_input(self, call: _Call, events: list[Event]) -> bool:
        """A custom call's raw input, streamed up to `CUSTOM_CLOSE`; True once it ends."""
        assert call.index is not None
        at = self._pending.find(CUSTOM_CLOSE)
        if at < 0:
            cut = len(self._pending) - partial_suffix(self._pending, CUSTOM_CLOSE)
            if cut:
                events.append(ArgumentsDelta(call.index, self._pending[:cut]))
                self._pending = self._pending[cut:]
            return False
        if at:
            events.append(ArgumentsDelta(call.index, self._pending[:at]))
        self._pending = self._pending[at + len(CUSTOM_CLOSE) :]
        call.args_done = True
        return True

    def _give_back(self, call: _Call, events: list[Event]) -> bool:
        """Not a call after all: the block is plain text, given back at its end tag."""
        at = self._pending.find(CLOSE_TAG)
        if at < 0:
            return False  # wait for the end tag (or finish) to give the whole block back
        end = at + len(CLOSE_TAG)
        events.append(TextDelta(call.raw + self._pending[:end]))
        self._pending = self._pending[end:]
        self._call = None
        return True


def _scan_arguments(call: _Call, text: str) -> tuple[int, int]:
    """(blank to skip, end) of the arguments' part of `text`; sets `args_done` at its end.

    The value is one JSON object (the grammar makes it so): it ends where its braces
    balance, braces inside strings aside.
    """
    skip = 0
    for i, ch in enumerate(text):
        if not call.started:
            if ch.isspace():
                skip = i + 1
                continue
            call.started = True
        if call.in_string:
            if call.escaped:
                call.escaped = False
            elif ch == "\\":
                call.escaped = True
            elif ch == '"':
                call.in_string = False
        elif ch == '"':
            call.in_string = True
        elif ch in "{[":
            call.depth += 1
        elif ch in "}]":
            call.depth -= 1
            if call.depth <= 0:
                call.args_done = True
                return skip, i + 1
    return skip, len(text)


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


@dataclass
class ParsedMessage:
    """A whole assistant turn: its text and its calls (name, JSON arguments)."""

    content: str = ""
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, events: Sequence[Event]) -> None:
        """Fold parser events in."""
        for event in events:
            if isinstance(event, TextDelta):
                self.content += event.text
            elif isinstance(event, CallStart):
                self.calls.append((event.id, event.name, ""))
            else:
                cid, name, args = self.calls[event.index]
                self.calls[event.index] = (cid, name, args + event.text)


def parse_message(text: str, names: Sequence[str], custom: Collection[str] = ()) -> ParsedMessage:
    """Parse a whole completion."""
    parser = ToolCallParser(names, custom)
    parsed = ParsedMessage()
    parsed.add(parser.feed(text))
    parsed.add(parser.finish())
    return parsed
