"""Small builders shared by the datalab tests (a unique module name: tests/ has no packages)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# The `write_lines` fixture (conftest.py): objects are dumped, str/bytes written as is.
WriteLines = Callable[..., Path]


def chat(user: str, answer: str, **extra: Any) -> dict[str, Any]:
    """A valid single-turn chat record."""
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        **extra,
    }


def good_records(n: int, **extra: Any) -> list[dict[str, Any]]:
    """``n`` distinct valid chat records (distinct enough not to be near-duplicates)."""
    topics = ["rivers", "mountains", "bread", "violins", "comets", "tides", "ferns", "glass"]
    out = []
    for i in range(n):
        t = topics[i % len(topics)]
        out.append(
            chat(
                f"Question {i}: what should I know about {t} number {i * 7919 % 1000}?",
                f"Answer {i}: {t} are interesting because of reason {i} and detail {i * 31}.",
                **extra,
            )
        )
    return out
