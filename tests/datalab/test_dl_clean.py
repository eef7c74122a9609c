"""Cleaning: each rule, code blocks untouched, every change counted, idempotent."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from datalab.clean import clean_record, clean_slow, clean_text
from datalab.formats import parse_record


def _clean(text: str) -> tuple[str, Counter[str]]:
    changes: Counter[str] = Counter()
    return clean_text(text, changes), changes


def test_clean_text_is_returned_untouched() -> None:
    text = "A normal answer.\n\n- item one\n  - nested item\n\tTabbed line."
    out, changes = _clean(text)
    assert out == text and not changes


def test_nfkc_controls_spaces_blank_lines_and_trim() -> None:
    out, changes = _clean("  ﬁne\x00 day\u200b  for   a\ttest  \r\nline\r\n\n\n\nend\x07  ")
    assert out == "fine day for a\ttest\nline\n\nend"
    assert changes == {
        "line_endings": 2,
        "control_chars": 3,
        "unicode_nfkc": 1,
        "spaces_collapsed": 2,
        "trailing_whitespace": 2,
        "blank_lines": 2,
        "trimmed": 1,
    }


def test_indentation_outside_code_is_kept_but_inner_runs_collapse() -> None:
    out, _ = _clean("List:\n    - deep   item\n  - shallow")
    assert out == "List:\n    - deep item\n  - shallow"


def test_fenced_code_keeps_alignment_indentation_and_blank_lines() -> None:
    code = "```python\ndef f(x):\n    y  =  1    # aligned\n\n\n    return x\n```"
    text = f"Here  is code:\n\n\n{code}\nDone  now."
    out, changes = _clean(text)
    assert out == f"Here is code:\n\n{code}\nDone now."
    assert changes["spaces_collapsed"] == 2 and changes["blank_lines"] == 1


def test_tilde_fences_and_unclosed_fences_protect_code() -> None:
    out, _ = _clean("~~~\na    b\n~~~\nc    d")
    assert out == "~~~\na    b\n~~~\nc d"
    out, _ = _clean("```\nx    y\n\n\n\nz")
    assert out == "```\nx    y\n\n\n\nz"


def test_clean_record_only_copies_when_something_changed() -> None:
    _, rec, _ = parse_record(
        {
            "messages": [
                {"role": "user", "content": "hi  there"},
                {"role": "assistant", "content": "ok."},
            ]
        },
        1,
    )
    assert rec is not None
    changes: Counter[str] = Counter()
    cleaned = clean_record(rec, changes)
    assert cleaned is not rec and cleaned.messages[0].content == "hi there"
    assert cleaned.messages[1] is rec.messages[1]
    assert clean_record(cleaned, Counter()) is cleaned


ALPHABET = st.sampled_from(
    [
        "a",
        "b",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        "\t",
        "\r",
        "\r\n",
        "```",
        "~~~",
        "`",
        "\x00",
        "\x1b",
        "\u00a0",
        "\u3000",
        "ﬁ",
        "e\u0301",
        "\u0301",
        "\ufeff",
        "\u200b",
        "Ａ",
        "\u2028",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join))
def test_cleaning_is_idempotent(text: str) -> None:
    once = clean_text(text)
    assert clean_text(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_cleaning_is_idempotent_on_any_unicode(text: str) -> None:
    once = clean_text(text)
    assert clean_text(once) == once


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join))
def test_fast_path_never_skips_a_change(text: str) -> None:
    assert clean_text(text) == clean_slow(text, Counter())
