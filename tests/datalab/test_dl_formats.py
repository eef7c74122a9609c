"""Per-record format detection, conversion to chat, and structural validation codes."""

from __future__ import annotations

from typing import Any

import pytest

from datalab.formats import ChatRecord, Format, detect_format, parse_record


def _parse(
    obj: dict[str, Any],
) -> tuple[Format | None, ChatRecord | None, list[tuple[str, str | None]]]:
    fmt, rec, problems = parse_record(obj, 7)
    assert all(p.line == 7 for p in problems)
    return fmt, rec, [(p.code, p.field) for p in problems]


def _turns(rec: ChatRecord | None) -> list[tuple[str, str | None]]:
    assert rec is not None
    return [(m.role, m.content) for m in rec.messages]


@pytest.mark.parametrize(
    ("obj", "fmt"),
    [
        ({"messages": []}, Format.CHAT),
        ({"instruction": "a", "output": "b"}, Format.ALPACA),
        ({"instrucao": "a", "resposta": "b"}, Format.ALPACA_PT),
        ({"prompt": "a", "completion": "b"}, Format.PROMPT_COMPLETION),
        ({"text": "a"}, Format.TEXT),
        ({"messages": [], "text": "a"}, Format.CHAT),
        ({"foo": 1}, None),
    ],
)
def test_detect_format_from_each_records_keys(obj: dict[str, Any], fmt: Format | None) -> None:
    assert detect_format(obj) is fmt


def test_alpaca_input_becomes_context_in_the_user_turn() -> None:
    fmt, rec, problems = _parse(
        {"instruction": "Summarise.", "input": "A long text.", "output": "Short."}
    )
    assert fmt is Format.ALPACA and not problems
    assert _turns(rec) == [("user", "Summarise.\n\nA long text."), ("assistant", "Short.")]
    _, rec, _ = _parse({"instruction": "Say hi.", "input": "  ", "output": "Hi!"})
    assert _turns(rec)[0] == ("user", "Say hi.")


def test_portuguese_prompt_completion_and_text_convert() -> None:
    _, rec, _ = _parse({"instrucao": "Traduz.", "contexto": "Olá", "resposta": "Hello"})
    assert _turns(rec) == [("user", "Traduz.\n\nOlá"), ("assistant", "Hello")]
    _, rec, _ = _parse({"prompt": "2+2?", "completion": "4"})
    assert _turns(rec) == [("user", "2+2?"), ("assistant", "4")]
    _, rec, _ = _parse({"text": "Once upon a time."})
    assert _turns(rec) == [("assistant", "Once upon a time.")]


def test_chat_keeps_weight_name_tools_and_joins_text_parts() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"default": None}}}]
    obj = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "name": "ana",
                "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            },
            {"role": "assistant", "content": "Old answer", "weight": 0},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "It is 42.", "weight": 1},
        ],
        "tools": tools,
    }
    fmt, rec, problems = _parse(obj)
    assert fmt is Format.CHAT and not problems and rec is not None
    out = rec.to_json()
    assert out["tools"] == tools
    assert out["messages"][1] == {"role": "user", "name": "ana", "content": "Hello"}
    assert out["messages"][2]["weight"] == 0 and out["messages"][5]["weight"] == 1
    assert "content" not in out["messages"][3]
    assert [m.trained for m in rec.messages] == [False, False, False, True, False, True]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"foo": 1}, [("missing_messages", "messages")]),
        ({"messages": "hi"}, [("invalid_type", "messages")]),
        ({"messages": []}, [("empty_messages", "messages")]),
        (
            {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},
            [("unknown_role", "messages[0].role")],
        ),
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]},
            [("invalid_type", "messages[0].content")],
        ),
        (
            {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},
            [("missing_field", "messages[0].role")],
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, [("no_assistant_message", None)]),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y", "weight": 0},
                ]
            },
            [("no_trainable_message", None)],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y", "weight": 2},
                ]
            },
            [("invalid_weight", "messages[1].weight")],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y", "weight": True},
                ]
            },
            [("invalid_weight", "messages[1].weight")],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x", "weight": 1},
                    {"role": "assistant", "content": "y"},
                ]
            },
            [("invalid_weight", "messages[0].weight")],
        ),
        ({"instruction": 3, "output": "b"}, [("invalid_type", "instruction")]),
        ({"instruction": "a"}, [("missing_field", "output")]),
        ({"prompt": "a", "completion": None}, [("invalid_type", "completion")]),
        ({"text": ["a"]}, [("invalid_type", "text")]),
    ],
)
def test_structural_problems_have_stable_codes_and_fields(
    obj: dict[str, Any], expected: list[tuple[str, str | None]]
) -> None:
    _, rec, problems = _parse(obj)
    assert rec is None
    assert problems == expected


def test_messages_name_the_line_and_the_field() -> None:
    _, _, problems = parse_record({"messages": [{"role": "wizard", "content": "x"}]}, 12)
    assert problems[0].message.startswith("Line 12: messages[0].role: unknown role 'wizard'")
