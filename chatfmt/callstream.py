"""Tool calls read back from streamed model text: the events, and the Hermes parser.

Every format's parser (see `chatfmt.toolcalls`) turns the model's text into the same
events: `TextDelta` for plain text, `CallStart` when a call's function is named and
`ArgumentsDelta` for each piece of its arguments; `ParsedMessage` folds them into a whole
turn. `ToolCallParser` reads the Hermes / Qwen format (`chatfmt.tools`) incrementally:
decoding is constrained to it whenever tools are offered (see
`server.engine.constraints`), so the parser only has to follow it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from chatfmt.tools import CLOSE_TAG, CUSTOM_CLOSE, OPEN_TAG


def new_call_id() -> str:
    """An id like OpenAI's `call_...`."""
    return f"call_{secrets.token_hex(12)}"


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
