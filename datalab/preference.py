"""Preference pairs (DPO data): OpenAI's preference format, and TRL's prompt/chosen/rejected.

OpenAI's DPO fine-tuning reads one pair per line::

    {"input": {"messages": [...], "tools": [...], "parallel_tool_calls": true},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

Each output is a list holding exactly one assistant message (which may carry ``tool_calls``):
the assistant's next turn after ``input.messages``, so the input must end with a user (or
tool) message. TRL's and Anthropic HH's ``{"prompt", "chosen", "rejected"}`` is read into the
same shape: ``prompt`` a string (one user turn) or a list of messages, ``chosen`` / ``rejected``
a string (one assistant turn) or a list of messages (a full conversation that repeats the
prompt is cut after it; without ``prompt`` the two lists' common opening is the prompt).

:func:`parse_pair` checks one line and reports each defect with a stable code;
:func:`read_pairs` reads the ``train.jsonl`` / ``valid.jsonl`` that
:func:`datalab.pipeline.prepare` writes for a preference file (OpenAI's shape, one pair a line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from datalab.formats import Format, Message, detect_format, problems_from_error, tool_call_error
from datalab.pairmodel import (
    OPENAI_NAMES,
    TRL_NAMES,
    FieldNames,
    PreferenceInput,
    PreferencePair,
    field_names,
    same_output,
)
from datalab.problems import Code, Problem

__all__ = [
    "FieldNames",
    "PreferenceInput",
    "PreferencePair",
    "field_names",
    "parse_pair",
    "read_pairs",
    "same_output",
]

_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


def _type_name(value: Any) -> str:
    names = {str: "a string", dict: "an object", list: "a list", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


class _Reader:
    """Collects the problems of one line while its parts are read."""

    def __init__(self, line: int, names: FieldNames) -> None:
        self.line = line
        self.names = names
        self.problems: list[Problem] = []

    def add(self, code: str, field: str, message: str) -> None:
        self.problems.append(
            Problem(line=self.line, code=code, field=field, message=f"Line {self.line}: {message}")
        )

    def messages(self, value: list[Any], field: str) -> list[Message] | None:
        try:
            return _MESSAGES.validate_python(value)
        except ValidationError as err:
            self.problems += problems_from_error(err, self.line, (field,))
            return None

    def output(self, value: Any, field: str) -> list[Message] | None:
        """An output as a list of messages (a string is one assistant message)."""
        if value is None:
            self.add(
                Code.MISSING_OUTPUT,
                field,
                f"`{field}` is missing: it must hold one "
                "assistant message, the answer to the input",
            )
            return None
        if isinstance(value, str) and not self.names.indexed:
            if not value.strip():
                self.add(Code.MISSING_OUTPUT, field, f"`{field}` is an empty string")
                return None
            return [Message.model_construct(role="assistant", content=value)]
        if not isinstance(value, list):
            hint = " (wrap the message in [...])" if isinstance(value, dict) else ""
            self.add(
                Code.INVALID_TYPE,
                field,
                f"{field}: must be a list holding one assistant message, got "
                f"{_type_name(value)}{hint}",
            )
            return None
        if not value:
            self.add(
                Code.MISSING_OUTPUT,
                field,
                f"`{field}` is empty: it must hold one assistant message",
            )
            return None
        return self.messages(value, field)

    def one_message(self, msgs: list[Message] | None, field: str) -> Message | None:
        if msgs is None:
            return None
        if len(msgs) != 1:
            code = Code.MISSING_OUTPUT if not msgs else Code.OUTPUT_NOT_ONE_MESSAGE
            self.add(
                code,
                field,
                f"{field} has {len(msgs)} messages; it must hold exactly one assistant "
                "message (DPO compares single answers to the same input)",
            )
            return None
        return msgs[0]

    def _at(self, part: str, i: int) -> str:
        return f"{part}[{i}]" if self.names.indexed else part

    def check(self, msgs: list[Message], pref: Message, non: Message) -> None:
        """The rules that relate the parts: how the input ends, roles, tool calls, sameness."""
        names = self.names
        last = msgs[-1].role
        where = self._at(names.input, len(msgs) - 1)
        if last in ("assistant", "system"):
            code = (
                Code.INPUT_ENDS_WITH_ASSISTANT
                if last == "assistant"
                else Code.INPUT_ENDS_WITH_SYSTEM
            )
            self.add(
                code,
                where,
                f"{names.input} ends with {'an' if last == 'assistant' else 'a'} {last} "
                "message; it must end with a user (or tool) "
                f"message, because {names.preferred} and {names.non_preferred} are the "
                "assistant's next turn",
            )
        for i, m in enumerate(msgs):
            self._tool_calls(m, self._at(names.input, i))
        for m, part in ((pref, names.preferred), (non, names.non_preferred)):
            where = self._at(part, 0)
            if m.role != "assistant":
                self.add(
                    Code.OUTPUT_NOT_ASSISTANT,
                    f"{where}.role",
                    f"{part} is a {m.role} message; it must be an assistant message",
                )
            self._tool_calls(m, where)
        if not self.problems and same_output(pref, non):
            self.add(
                Code.IDENTICAL_OUTPUTS,
                names.non_preferred,
                f"{names.preferred} and {names.non_preferred} are the same answer (case and "
                "spacing ignored): the pair teaches nothing",
            )

    def _tool_calls(self, m: Message, where: str) -> None:
        for j, call in enumerate(m.tool_calls or ()):
            detail = tool_call_error(call)
            if detail is not None:
                field = f"{where}.tool_calls[{j}]"
                self.add(Code.INVALID_TOOL_CALL, field, f"{field}: {detail}")


def _build(
    msgs: list[Message],
    pref: Message,
    non: Message,
    tools: list[dict[str, Any]] | None = None,
    parallel: bool | None = None,
) -> PreferencePair:
    # Every part is already validated: construct without validating again (the hot path).
    inp = PreferenceInput.model_construct(messages=msgs, tools=tools, parallel_tool_calls=parallel)
    return PreferencePair.model_construct(
        input=inp, preferred_output=[pref], non_preferred_output=[non]
    )


def _from_openai(obj: dict[str, Any], line: int) -> tuple[PreferencePair | None, list[Problem]]:
    r = _Reader(line, OPENAI_NAMES)
    inp = obj.get("input")
    msgs: list[Message] | None = None
    tools, parallel = None, None
    if inp is not None and not isinstance(inp, dict):
        r.add(
            Code.INVALID_TYPE,
            "input",
            f"input: must be an object with `messages`, got {_type_name(inp)}",
        )
    elif inp is None or inp.get("messages") is None:
        hint = "; the top-level `messages` belongs under `input`" if "messages" in obj else ""
        r.add(
            Code.MISSING_INPUT_MESSAGES,
            "input.messages",
            f"`input.messages` is missing: the conversation the two outputs answer{hint}",
        )
    else:
        value = inp["messages"]
        if not isinstance(value, list):
            r.add(
                Code.INVALID_TYPE,
                "input.messages",
                f"input.messages: must be a list of messages, got {_type_name(value)}",
            )
        elif not value:
            r.add(Code.MISSING_INPUT_MESSAGES, "input.messages", "`input.messages` is empty")
        else:
            msgs = r.messages(value, "input.messages")
        tools = inp.get("tools")
        if tools is not None and not (
            isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
        ):
            r.add(Code.INVALID_TYPE, "input.tools", "input.tools: must be a list of tool objects")
        parallel = inp.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            r.add(
                Code.INVALID_TYPE,
                "input.parallel_tool_calls",
                "input.parallel_tool_calls: must be true or false",
            )
    pref = r.one_message(
        r.output(obj.get("preferred_output"), "preferred_output"), "preferred_output"
    )
    non = r.one_message(
        r.output(obj.get("non_preferred_output"), "non_preferred_output"), "non_preferred_output"
    )
    if r.problems or msgs is None or pref is None or non is None:
        return None, r.problems
    r.check(msgs, pref, non)
    if r.problems:
        return None, r.problems
    return _build(msgs, pref, non, tools, parallel), []


def _same(a: Sequence[Message], b: Sequence[Message]) -> bool:
    return len(a) == len(b) and all(x.to_json() == y.to_json() for x, y in zip(a, b, strict=True))


def _from_trl(obj: dict[str, Any], line: int) -> tuple[PreferencePair | None, list[Problem]]:
    r = _Reader(line, TRL_NAMES)
    prompt = obj.get("prompt")
    msgs: list[Message] | None = None
    if isinstance(prompt, str):
        if prompt.strip():
            msgs = [Message.model_construct(role="user", content=prompt)]
        else:
            r.add(Code.MISSING_INPUT_MESSAGES, "prompt", "`prompt` is an empty string")
    elif isinstance(prompt, list):
        if prompt:
            msgs = r.messages(prompt, "prompt")
        else:
            r.add(Code.MISSING_INPUT_MESSAGES, "prompt", "`prompt` is empty")
    elif prompt is not None:
        r.add(
            Code.INVALID_TYPE,
            "prompt",
            f"prompt: must be a string or a list of messages, got {_type_name(prompt)}",
        )
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        r.add(Code.INVALID_TYPE, "system", f"system: must be a string, got {_type_name(system)}")
    chosen = r.output(obj.get("chosen"), "chosen")
    rejected = r.output(obj.get("rejected"), "rejected")
    if r.problems or chosen is None or rejected is None:
        return None, r.problems
    if prompt is None:
        # Implicit prompt (TRL): two full conversations; what they share is the prompt.
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and _same(
            chosen[n : n + 1], rejected[n : n + 1]
        ):
            n += 1
        if n == 0:
            r.add(
                Code.MISSING_INPUT_MESSAGES,
                "prompt",
                "`prompt` is missing: give it, or make chosen and rejected whole "
                "conversations that open with it",
            )
            return None, r.problems
        msgs, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    assert msgs is not None
    # A full conversation that repeats the prompt keeps only what follows it.
    k = len(msgs)
    chosen = chosen[k:] if len(chosen) > k and _same(chosen[:k], msgs) else chosen
    rejected = rejected[k:] if len(rejected) > k and _same(rejected[:k], msgs) else rejected
    pref = r.one_message(chosen, "chosen")
    non = r.one_message(rejected, "rejected")
    if pref is None or non is None:
        return None, r.problems
    if system and msgs[0].role != "system":
        msgs = [Message.model_construct(role="system", content=system), *msgs]
    r.check(msgs, pref, non)
    if r.problems:
        return None, r.problems
    return _build(msgs, pref, non), []


def parse_pair(
    obj: dict[str, Any], line: int, fmt: Format | None = None
) -> tuple[PreferencePair | None, list[Problem]]:
    """Read one line as a preference pair in OpenAI's shape: (the pair, []) or (None, problems).

    ``fmt`` is the record's detected format (detected here when None): prompt/chosen/
    rejected is converted, anything else is read as OpenAI's preference format.
    """
    fmt = fmt or detect_format(obj)
    if fmt is Format.PROMPT_CHOSEN_REJECTED:
        return _from_trl(obj, line)
    return _from_openai(obj, line)


def read_pairs(path: Path) -> Iterator[PreferencePair]:
    """The pairs of a prepared file (``train.jsonl`` / ``valid.jsonl`` of a preference file).

    A DPO trainer's reader: each line is OpenAI's preference shape, already cleaned,
    validated and deduplicated. Raises ``ValueError`` on a line that is not a valid pair.
    """
    with Path(path).open(encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            obj = json.loads(text)
            pair, problems = parse_pair(obj, n) if isinstance(obj, dict) else (None, [])
            if pair is None:
                detail = problems[0].message if problems else f"Line {n} is not a JSON object"
                raise ValueError(f"{path}: {detail}")
            yield pair
