"""The preference pair (DPO data) in OpenAI's shape, as :mod:`datalab.preference` reads it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from datalab.formats import ChatRecord, Format, Message


class PreferenceInput(BaseModel):
    """The conversation the two outputs answer, with the tools it may call."""

    model_config = ConfigDict(strict=True, extra="ignore")

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool | None = None


class PreferencePair(BaseModel):
    """One preference pair in OpenAI's shape: an input, a preferred and a non-preferred output."""

    model_config = ConfigDict(strict=True, extra="ignore")

    input: PreferenceInput
    preferred_output: list[Message]
    non_preferred_output: list[Message]

    @property
    def preferred(self) -> Message:
        """The preferred assistant message."""
        return self.preferred_output[0]

    @property
    def non_preferred(self) -> Message:
        """The non-preferred assistant message."""
        return self.non_preferred_output[0]

    def records(self) -> tuple[ChatRecord, ChatRecord, ChatRecord]:
        """(prompt, chosen, rejected) as conversations: the input, then input + each output.

        Earlier assistant turns of the input get weight 0: DPO learns only from the outputs.
        """
        msgs = [
            m.model_copy(update={"weight": 0}) if m.role == "assistant" else m
            for m in self.input.messages
        ]
        tools = self.input.tools

        def rec(extra: list[Message]) -> ChatRecord:
            return ChatRecord.model_construct(messages=msgs + extra, tools=tools)

        return rec([]), rec([self.preferred]), rec([self.non_preferred])

    def to_json(self) -> dict[str, Any]:
        """The pair as one line of OpenAI's preference JSONL (unset fields left out)."""
        out: dict[str, Any] = json.loads(self.json_line())
        return out

    def json_line(self) -> str:
        """The pair as a JSONL line, newline-terminated."""
        return self.model_dump_json(exclude_none=True) + "\n"

    def map_contents(self, fn: Callable[[str], str]) -> PreferencePair:
        """The pair with ``fn`` applied to every message's text; itself when nothing changes."""

        def apply(msgs: list[Message]) -> list[Message] | None:
            out, changed = [], False
            for m in msgs:
                new = fn(m.content) if m.content else m.content
                changed = changed or new != m.content
                out.append(m if new == m.content else m.model_copy(update={"content": new}))
            return out if changed else None

        inp = apply(self.input.messages)
        pref = apply(self.preferred_output)
        non = apply(self.non_preferred_output)
        if inp is None and pref is None and non is None:
            return self
        update: dict[str, Any] = {}
        if inp is not None:
            update["input"] = self.input.model_copy(update={"messages": inp})
        if pref is not None:
            update["preferred_output"] = pref
        if non is not None:
            update["non_preferred_output"] = non
        return self.model_copy(update=update)


class FieldNames(NamedTuple):
    """How a format names the three parts of a pair, for problem messages."""

    input: str
    preferred: str
    non_preferred: str
    indexed: bool  # whether the parts are lists a field path can index


OPENAI_NAMES = FieldNames("input.messages", "preferred_output", "non_preferred_output", True)
TRL_NAMES = FieldNames("prompt", "chosen", "rejected", False)


def field_names(fmt: Format | str | None) -> FieldNames:
    """The field names problems about a pair of format ``fmt`` use."""
    return (
        TRL_NAMES
        if fmt in (Format.PROMPT_CHOSEN_REJECTED, "prompt_chosen_rejected")
        else OPENAI_NAMES
    )


def _norm(m: Message) -> tuple[str, str, str]:
    calls = json.dumps(m.tool_calls, sort_keys=True) if m.tool_calls else ""
    return m.role, " ".join((m.content or "").casefold().split()), calls


def same_output(a: Message, b: Message) -> bool:
    """Whether two outputs are the same answer (case and spacing ignored, tool calls equal)."""
    return _norm(a) == _norm(b)
