"""Diversity of a dataset: lengths, opening words, vocabulary, categories, duplicates."""

from __future__ import annotations

import math
import random
import re
from array import array
from collections import Counter
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, Field

from datalab.formats import ChatRecord

_WORD = re.compile(r"\w+")
# The sampled texts are dedupe's normalised conversations ("user: ... assistant: ...").
_ROLE_TAG = re.compile(r"(?:^| )(?:system|user|assistant|tool|function): ")
SHORT_CHARS, LONG_CHARS = 200, 1000
FIRST_WORD_WARN = 0.30
VOCAB_SAMPLE = 5_000  # records in the vocabulary sample


class LengthStats(BaseModel):
    """Distribution of a length, in characters."""

    min: int
    median: float
    mean: float
    p95: float
    max: int


class DiversitySection(BaseModel):
    """How varied the kept examples are."""

    n_examples: int
    length_buckets: dict[str, int] = Field(
        description=f"answers short (<{SHORT_CHARS} chars), medium, long (>{LONG_CHARS})"
    )
    answer_chars: LengthStats | None
    prompt_chars: LengthStats | None
    top_first_words: dict[str, float] = Field(description="share of prompts opening with a word")
    vocabulary_sample: int = Field(description="records the vocabulary figures are measured on")
    distinct_words: int = Field(description="distinct words in the sample")
    total_words: int = Field(description="words in the sample")
    type_token_ratio: float = Field(description="distinct / total words (vocabulary richness)")
    categories: dict[str, int]
    category_balance: float | None = Field(
        description="normalised entropy of categories: 1 even, 0 all in one"
    )
    duplicates_ratio: float = Field(description="duplicates dropped / valid records")
    warnings: list[str]


def _stats(values: array[int]) -> LengthStats | None:
    if not values:
        return None
    a = np.asarray(values)
    return LengthStats(
        min=int(a.min()),
        median=float(np.median(a)),
        mean=round(float(a.mean()), 1),
        p95=float(np.percentile(a, 95)),
        max=int(a.max()),
    )


class RecordFigures(NamedTuple):
    """The per-record numbers diversity needs (computed where the record is parsed)."""

    answer_chars: int
    prompt_chars: int  # -1 when the record has no user turn
    first_word: str


def figures(record: ChatRecord) -> RecordFigures:
    """Answer length, first prompt length and the prompt's opening word."""
    answer = 0
    prompt: str | None = None
    for m in record.messages:
        if m.role == "assistant":
            if m.weight != 0:
                answer += len(m.content or "")
        elif m.role == "user" and prompt is None:
            prompt = m.content or ""
    if prompt is None:
        return RecordFigures(answer, -1, "")
    head = prompt[:64].split(None, 1)
    first = _WORD.search(head[0].lower()) if head else None
    return RecordFigures(answer, len(prompt), first.group() if first else "")


class DiversityStats:
    """Accumulates diversity figures one record at a time.

    Vocabulary is measured on a seeded reservoir sample of ``VOCAB_SAMPLE`` records: a
    type-token ratio only compares across datasets at a fixed sample size (it falls as text
    grows), and tokenising every word of every record would dominate the pipeline's time.
    """

    def __init__(self, seed: int = 0) -> None:
        self.answer_chars: array[int] = array("I")
        self.prompt_chars: array[int] = array("I")
        self.first_words: Counter[str] = Counter()
        self.n_prompts = 0
        self.categories: Counter[str] = Counter()
        self._sample: list[str] = []
        self._seen = 0
        self._rng = random.Random(seed)

    def add(self, fig: RecordFigures, category: str | None, text: str) -> None:
        """Account for one kept record: its figures, category and (normalised) text."""
        self.answer_chars.append(min(fig.answer_chars, 0xFFFFFFFF))
        if fig.prompt_chars >= 0:
            self.prompt_chars.append(min(fig.prompt_chars, 0xFFFFFFFF))
            self.n_prompts += 1
            self.first_words[fig.first_word] += 1
        if category is not None:
            self.categories[category] += 1
        # Reservoir sampling (Algorithm R): every record has the same chance to be sampled.
        self._seen += 1
        if len(self._sample) < VOCAB_SAMPLE:
            self._sample.append(text)
        else:
            j = int(self._rng.random() * self._seen)
            if j < VOCAB_SAMPLE:
                self._sample[j] = text

    def _vocabulary(self) -> tuple[int, int]:
        vocab: set[str] = set()
        total = 0
        for text in self._sample:
            words = _WORD.findall(_ROLE_TAG.sub(" ", text).lower())
            total += len(words)
            vocab.update(words)
        return len(vocab), total

    def section(self, n_duplicates: int, n_valid: int) -> DiversitySection:
        """The report section; ``n_duplicates`` of ``n_valid`` valid records were dropped."""
        a = np.asarray(self.answer_chars)
        buckets = {
            "short": int((a < SHORT_CHARS).sum()),
            "medium": int(((a >= SHORT_CHARS) & (a <= LONG_CHARS)).sum()),
            "long": int((a > LONG_CHARS).sum()),
        }
        top = (
            {w: round(c / self.n_prompts, 3) for w, c in self.first_words.most_common(5)}
            if self.n_prompts
            else {}
        )
        warnings = []
        for word, share in top.items():
            if share > FIRST_WORD_WARN and self.n_prompts >= 10:
                warnings.append(
                    f"{share:.0%} of prompts start with {word!r}: vary how questions are asked"
                )
        balance = None
        if len(self.categories) > 1:
            total = sum(self.categories.values())
            ent = -sum(c / total * math.log(c / total) for c in self.categories.values())
            balance = round(ent / math.log(len(self.categories)), 3)
            if balance < 0.5:
                warnings.append(f"categories are unbalanced (balance {balance:.2f} of 1)")
        n = len(self.answer_chars)
        if n and buckets["short"] / n > 0.8:
            warnings.append(f"{buckets['short'] / n:.0%} of answers are under {SHORT_CHARS} chars")
        dup_ratio = round(n_duplicates / n_valid, 4) if n_valid else 0.0
        distinct, total = self._vocabulary()
        if dup_ratio > 0.2:
            warnings.append(f"{dup_ratio:.0%} of valid records were duplicates")
        return DiversitySection(
            n_examples=n,
            length_buckets=buckets,
            answer_chars=_stats(self.answer_chars),
            prompt_chars=_stats(self.prompt_chars),
            top_first_words=top,
            vocabulary_sample=len(self._sample),
            distinct_words=distinct,
            total_words=total,
            type_token_ratio=round(distinct / total, 4) if total else 0.0,
            categories=dict(self.categories.most_common()),
            category_balance=balance,
            duplicates_ratio=dup_ratio,
            warnings=warnings,
        )
