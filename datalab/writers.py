"""Writers: chat JSONL (what training consumes), Alpaca JSONL, and text prompt strings.

Every file is written atomically: to a temporary file in the same folder, then
``os.replace``-d over the target, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from chatfmt.template import render_chatml as chatfmt_chatml
from datalab.formats import ChatRecord

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


@contextmanager
def atomic_writer(path: Path) -> Iterator[IO[str]]:
    """Open a text file for writing that appears at ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_line(obj: dict[str, Any]) -> str:
    """One JSONL line (UTF-8 kept readable, newline-terminated)."""
    return json.dumps(obj, ensure_ascii=False) + "\n"


def chat_line(record: ChatRecord) -> str:
    """The record as a line of OpenAI's chat fine-tuning format."""
    # pydantic-core's serializer is several times faster than json.dumps(model_dump()).
    # exclude_none drops unset message fields only; None values inside tool schemas stay.
    return record.model_dump_json(exclude_none=True) + "\n"


def render_chatml(record: ChatRecord) -> str:
    """The conversation as one ChatML string, tools and tool calls as pomar serves them."""
    return chatfmt_chatml(message_dicts(record), record.tools)


def message_dicts(record: ChatRecord) -> list[dict[str, Any]]:
    """OpenAI-shaped message dicts, without our `weight` (no template reads it)."""
    return [{k: v for k, v in m.to_json().items() if k != "weight"} for m in record.messages]


def _single_turn(record: ChatRecord) -> tuple[str | None, str, str] | None:
    msgs = record.messages
    system = None
    if msgs and msgs[0].role == "system":
        system, msgs = msgs[0].content, msgs[1:]
    if (
        record.tools
        or len(msgs) != 2
        or msgs[0].role != "user"
        or msgs[1].role != "assistant"
        or msgs[1].content is None
    ):
        return None
    return system, msgs[0].content or "", msgs[1].content


def to_alpaca(record: ChatRecord) -> dict[str, Any] | None:
    """An Alpaca object for a single-turn record; None when it cannot be one (multi-turn, tools)."""
    turn = _single_turn(record)
    if turn is None:
        return None
    system, user, answer = turn
    out: dict[str, Any] = {"instruction": user, "input": "", "output": answer}
    if system:
        out["system"] = system
    return out


def to_alpaca_prompt(record: ChatRecord) -> str | None:
    """The single-turn record as an Alpaca prompt string; None when it is not single-turn."""
    turn = _single_turn(record)
    if turn is None:
        return None
    _, user, answer = turn
    return ALPACA_PROMPT.format(instruction=user, output=answer)
