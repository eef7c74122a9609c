"""The formats read as whole blocks (`BlockParser`), and bare JSON turns read as calls.

Qwen3-Coder, Llama 3 and Mistral calls (see `chatfmt.toolcalls`) are not streamed
argument by argument as Hermes calls are (`chatfmt.callstream.ToolCallParser`): text
streams until a call begins, and the calls come out once their block is complete, read
by `chatfmt.callblocks`. `BareJsonCalls` wraps any format's parser for `tool_choice:
"auto"`, where small models often answer with the call as bare JSON.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chatfmt.callblocks import READERS, Calls, json_calls
from chatfmt.callstream import (
    ArgumentsDelta,
    CallStart,
    Event,
    TextDelta,
    new_call_id,
    partial_suffix,
)

if TYPE_CHECKING:
    from chatfmt.toolcalls import CallParser, ToolFormat


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
    calls = json_calls(body)
    if not calls or any(name not in names for name, _ in calls):
        return None
    return calls


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
