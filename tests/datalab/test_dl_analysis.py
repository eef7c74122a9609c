"""Diversity, size guidance and PII scanning."""

from __future__ import annotations

import re

import pytest

from datalab.diversity import DiversityStats, figures
from datalab.formats import ChatRecord, parse_record
from datalab.guidance import size_guidance
from datalab.pii import PiiTally, find_pii, iban_ok, luhn_ok, redact


def _rec(user: str, answer: str) -> ChatRecord:
    _, rec, _ = parse_record(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]},
        1,
    )
    assert rec is not None
    return rec


def test_diversity_lengths_first_words_categories_and_duplicates() -> None:
    stats = DiversityStats(seed=0)
    words: set[str] = set()
    for i in range(20):
        answer = "short answer" if i < 10 else "x" * (300 if i < 15 else 1500)
        user = "What is it?" if i < 14 else f"Explain thing {i}"
        rec = _rec(user, answer)
        words |= set(re.findall(r"\w+", f"{user} {answer}".lower()))
        stats.add(figures(rec), "a" if i < 18 else "b", f"user: {user} assistant: {answer}")
    section = stats.section(n_duplicates=5, n_valid=25)
    assert section.length_buckets == {"short": 10, "medium": 5, "long": 5}
    assert section.top_first_words["what"] == 0.7
    assert any("70% of prompts start with 'what'" in w for w in section.warnings)
    assert section.categories == {"a": 18, "b": 2}
    assert section.category_balance is not None and section.category_balance < 0.5
    assert section.duplicates_ratio == 0.2
    assert section.answer_chars is not None and section.answer_chars.max == 1500
    assert section.vocabulary_sample == 20
    assert 0 < section.type_token_ratio < 1
    assert section.distinct_words == len(words)  # role tags are not vocabulary


def test_first_word_ignores_punctuation_and_case() -> None:
    assert figures(_rec("¿Qué hora es?", "Son las tres en punto.")).first_word == "qué"
    assert figures(_rec("Hello, world", "Hi there friend.")).first_word == "hello"


@pytest.mark.parametrize(
    ("n", "level"),
    [(10, "below_minimum"), (50, "minimum"), (250, "recommended"), (600, "ideal")],
)
def test_size_guidance_for_style(n: int, level: str) -> None:
    g = size_guidance(n, "style")
    assert (g.minimum, g.recommended, g.ideal) == (50, 200, 500)
    assert g.level == level and g.laptop_warning is None


def test_size_guidance_tables_and_laptop_warning() -> None:
    assert (size_guidance(1, "domain").minimum, size_guidance(1, "domain").ideal) == (200, 5000)
    g = size_guidance(12_000, "knowledge")
    assert (g.minimum, g.recommended, g.ideal, g.level) == (1000, 5000, 10000, "ideal")
    assert g.laptop_warning is not None
    assert size_guidance(600, "behaviour").level == "minimum"


def _kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in find_pii(text)]


def test_pii_kinds_are_found_and_confirmed() -> None:
    text = (
        "Mail ana.silva@example.pt, call +351 912 345 678 or (11) 98765-4321. "
        "Card 4111 1111 1111 1111; IBAN PT50 0002 0123 1234 5678 9015 4; "
        "hosts 192.168.1.20 and 2001:db8::1."
    )
    assert _kinds(text) == [
        ("email", "ana.silva@example.pt"),
        ("phone", "+351 912 345 678"),
        ("phone", "(11) 98765-4321"),
        ("credit_card", "4111 1111 1111 1111"),
        ("iban", "PT50 0002 0123 1234 5678 9015 4"),
        ("ip_address", "192.168.1.20"),
        ("ip_address", "2001:db8::1"),
    ]


def test_pii_false_positives_are_rejected() -> None:
    text = (
        "Card 4111 1111 1111 1112 fails Luhn; IBAN PT50 0002 0123 1234 5678 9015 5 fails mod-97; "
        "999.1.1.1 is no IP; on 2024-01-15 at 12:30:45, pi is 3.14159265, order 123456789, "
        "id abc123456789, slice x[::2], year 2023."
    )
    assert _kinds(text) == []


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_redaction_and_tally() -> None:
    text = "Write to a@b.co or call +1 (555) 123-4567."
    assert redact(text, find_pii(text)) == "Write to [EMAIL] or call [PHONE]."
    tally = PiiTally()
    tally.add(3, ["email", "phone"])
    tally.add(9, ["email"])
    tally.add(10, [])
    section = tally.section()
    assert section.counts["email"] == 2 and section.records_with_pii == 2
    assert section.lines == {"email": [3, 9], "phone": [3]}
