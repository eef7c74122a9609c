"""Writers: chat JSONL, Alpaca, ChatML and Alpaca prompt strings; atomic files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datalab.formats import ChatRecord, parse_record
from datalab.writers import atomic_writer, chat_line, render_chatml, to_alpaca, to_alpaca_prompt


def _rec(obj: dict[str, object]) -> ChatRecord:
    _, rec, problems = parse_record(obj, 1)
    assert rec is not None, problems
    return rec


SINGLE = {
    "messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Olá, tudo bem?"},
        {"role": "assistant", "content": "Tudo ótimo, obrigado!"},
    ]
}
MULTI = {
    "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
}


def test_chat_line_is_one_json_object_without_unset_fields() -> None:
    line = chat_line(_rec(SINGLE))
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == SINGLE
    assert "ótimo" in line  # UTF-8 kept readable


def test_chatml_rendering() -> None:
    assert render_chatml(_rec(SINGLE)) == (
        "<|im_start|>system\nBe kind.<|im_end|>\n"
        "<|im_start|>user\nOlá, tudo bem?<|im_end|>\n"
        "<|im_start|>assistant\nTudo ótimo, obrigado!<|im_end|>\n"
    )


def test_alpaca_only_for_single_turn_records() -> None:
    assert to_alpaca(_rec(SINGLE)) == {
        "instruction": "Olá, tudo bem?",
        "input": "",
        "output": "Tudo ótimo, obrigado!",
        "system": "Be kind.",
    }
    assert to_alpaca(_rec(MULTI)) is None
    assert to_alpaca_prompt(_rec(MULTI)) is None
    prompt = to_alpaca_prompt(_rec(SINGLE))
    assert prompt is not None
    assert "### Instruction:\nOlá, tudo bem?\n\n### Response:\nTudo ótimo, obrigado!" in prompt


def test_atomic_writer_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind
    with atomic_writer(target) as f:
        f.write("new\n")
    assert target.read_text() == "new\n"
