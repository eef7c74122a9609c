"""Preference pairs in the pipeline: cleaning, rules, dedupe text, grouping, token figures.

A pair is cleaned like a conversation (every message's text), judged by the same thresholds
(the preferred answer as a trained answer; the non-preferred one only for being empty or too
long), deduplicated exactly on its whole text (input and both outputs; near-dedupe is not
applied, since pairs that share an input are meant to look alike), and grouped for the split
by its input, so that every pair of one prompt lands on the same side.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from datalab.clean import clean_text
from datalab.config import PipelineConfig
from datalab.formats import PAIR_FORMATS, Format, Message
from datalab.pii import find_pii, redact
from datalab.preference import FieldNames, PreferencePair, field_names
from datalab.problems import Code, Problem, ProblemLog
from datalab.tokens import TokenCounter
from datalab.validate import answer_problems, count_urls

TrainingMethod = Literal["supervised", "dpo"]
PAIR_FORMAT_NAMES = frozenset(f.value for f in PAIR_FORMATS)
_OUTPUT_SEP = " \u27c2 "  # between the preferred and the non-preferred answer (not a word)


def clean_pair(pair: PreferencePair, changes: Counter[str]) -> PreferencePair:
    """Clean every message's text (see :mod:`datalab.clean`); the same object if unchanged."""
    return pair.map_contents(lambda text: clean_text(text, changes))


def redact_pair(pair: PreferencePair) -> PreferencePair:
    """Replace the personal data of every message's text."""
    return pair.map_contents(lambda text: redact(text, find_pii(text)))


def _at(names: FieldNames, part: str, i: int) -> str:
    return f"{part}[{i}].content" if names.indexed else part


def check_pair_rules(
    pair: PreferencePair,
    line: int,
    config: PipelineConfig,
    fmt: Format | str | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Problem]:
    """Every threshold rule a cleaned pair breaks (empty list when it passes)."""
    names = field_names(fmt)
    out: list[Problem] = []

    def add(code: str, field: str, message: str) -> None:
        out.append(Problem(line=line, code=code, field=field, message=f"Line {line}: {message}"))

    n_urls = 0
    for i, m in enumerate(pair.input.messages):
        if m.content:
            n_urls += count_urls(m.content)
        elif not (m.role == "assistant" and (m.tool_calls or m.function_call)):
            add(
                Code.EMPTY_CONTENT,
                _at(names, names.input, i),
                f"{names.input}: {m.role} message {i} has no content",
            )
    outputs = (
        (pair.preferred, names.preferred, True),
        (pair.non_preferred, names.non_preferred, False),
    )
    for m, part, learned in outputs:
        field = _at(names, part, 0)
        if not m.content:
            if not (m.tool_calls or m.function_call):
                add(Code.EMPTY_CONTENT, field, f"{part} has no content and no tool call")
            continue
        if learned:  # a rejected answer full of links is a fine rejected answer
            n_urls += count_urls(m.content)
        for code, message in answer_problems(m.content, config, count_tokens, learned=learned):
            add(code, field, f"{part}: {message}")
    if config.max_urls is not None and n_urls > config.max_urls:
        add(
            Code.TOO_MANY_URLS,
            names.input,
            f"the input and the preferred answer contain {n_urls} URLs, over the maximum of "
            f"{config.max_urls}",
        )
    return out


def _turn(m: Message) -> str:
    calls = f" {json.dumps(m.tool_calls, sort_keys=True)}" if m.tool_calls else ""
    return f"{m.role}: {m.content or ''}{calls}"


def input_text(pair: PreferencePair) -> str:
    """The normalised input (case and spacing ignored, tool calls and tools kept)."""
    raw = "\n".join([_turn(m) for m in pair.input.messages])
    if pair.input.tools:
        raw += "\ntools: " + json.dumps(pair.input.tools, sort_keys=True)
    return " ".join(raw.casefold().split())


def pair_text(pair: PreferencePair) -> str:
    """The normalised text exact duplicates are judged on: input, preferred, non-preferred.

    Order matters: the same two answers preferred the other way round are another pair.
    """
    answers = _turn(pair.preferred) + _OUTPUT_SEP + _turn(pair.non_preferred)
    return input_text(pair) + " " + " ".join(answers.casefold().split())


def input_group(pair: PreferencePair) -> str:
    """The split group of a pair: its normalised input, so one prompt stays on one side."""
    digest = hashlib.blake2b(input_text(pair).encode("utf-8"), digest_size=8).hexdigest()
    return f"input:{digest}"


def pair_chars(pair: PreferencePair) -> int:
    """Characters of the pair's longer sequence (the input and its longer answer), framed
    as a conversation's are (see ``Outcome.n_chars``)."""
    answers = (pair.preferred, pair.non_preferred)
    longer = max(len(" ".join(_turn(m).casefold().split())) for m in answers)
    return len(input_text(pair)) + 1 + longer + 20 * (len(pair.input.messages) + 1)


def method_counts(formats: Mapping[str, int]) -> dict[TrainingMethod, int]:
    """Records per fine-tuning method their formats are for."""
    dpo = sum(n for f, n in formats.items() if f in PAIR_FORMAT_NAMES)
    return {"supervised": sum(formats.values()) - dpo, "dpo": dpo}


def method_of(fmt: str) -> TrainingMethod:
    """The fine-tuning method records of format ``fmt`` are for."""
    return "dpo" if fmt in PAIR_FORMAT_NAMES else "supervised"


class TokenStats(BaseModel):
    """Distribution of a length, in tokens."""

    min: int
    median: float
    mean: float
    p95: float
    max: int


def _stats(a: np.ndarray) -> TokenStats:
    return TokenStats(
        min=int(a.min()),
        median=float(np.median(a)),
        mean=round(float(a.mean()), 1),
        p95=round(float(np.percentile(a, 95)), 1),
        max=int(a.max()),
    )


class PairTokens(BaseModel):
    """Token lengths of the kept pairs (each output alone, without the prompt)."""

    prompt: TokenStats
    preferred: TokenStats
    non_preferred: TokenStats
    longest: TokenStats = Field(description="prompt + the longer output, per pair")
    step_tokens_mean: float = Field(
        description="tokens a training step processes per pair: prompt + preferred and "
        "prompt + non-preferred, padded to the longer (2 x longest)"
    )


class PreferenceSection(BaseModel):
    """What the file holds as DPO data."""

    n_pairs: int = Field(description="pairs kept for training and validation")
    n_prompts: int = Field(description="distinct inputs among them")
    max_pairs_per_prompt: int
    tokens: PairTokens | None


def preference_section(
    groups: list[str], counter: TokenCounter | None, keep: list[bool]
) -> PreferenceSection:
    """The report section over the kept pairs (``keep`` flags them among the kept records)."""
    kept_groups = Counter(g for g, k in zip(groups, keep, strict=True) if k)
    tokens = None
    if counter is not None and len(counter.pair_counts) == 3 * len(counter.counts):
        a = np.asarray(counter.pair_counts, dtype=np.int64).reshape(-1, 3)
        a = a[np.asarray(keep, dtype=bool)]
        if len(a):
            prompt, chosen, rejected = a[:, 0], a[:, 1], a[:, 2]
            longest = np.maximum(chosen, rejected)
            tokens = PairTokens(
                prompt=_stats(prompt),
                preferred=_stats(np.maximum(chosen - prompt, 0)),
                non_preferred=_stats(np.maximum(rejected - prompt, 0)),
                longest=_stats(longest),
                step_tokens_mean=round(float(2 * longest.mean()), 1),
            )
    return PreferenceSection(
        n_pairs=sum(kept_groups.values()),
        n_prompts=len(kept_groups),
        max_pairs_per_prompt=max(kept_groups.values(), default=0),
        tokens=tokens,
    )


def resolve_method(method: str, formats: Mapping[str, int]) -> TrainingMethod:
    """The method a file trains with: the configured one, or (``auto``) its majority's."""
    if method in ("supervised", "dpo"):
        return "dpo" if method == "dpo" else "supervised"
    counts = method_counts(formats)
    return "dpo" if counts["dpo"] > counts["supervised"] else "supervised"


_KIND = {"dpo": "preference pair(s) (DPO data)", "supervised": "supervised example(s)"}


def method_blocking(
    method: str, formats: Mapping[str, int], first_line: Mapping[str, int], log: ProblemLog
) -> str | None:
    """Why the records do not all fit one method (logged at the first misfit), or None.

    With ``auto`` a file holding both kinds is refused (``mixed_preference_and_chat``):
    one file trains one way. With an explicit method, records of the other kind are
    refused (``method_mismatch``).
    """
    counts = method_counts(formats)
    resolved = resolve_method(method, formats)
    other: TrainingMethod = "supervised" if resolved == "dpo" else "dpo"
    if not counts[other]:
        return None
    first = {
        kind: min((n for f, n in first_line.items() if method_of(f) == kind), default=0)
        for kind in ("dpo", "supervised")
    }
    if method == "auto":
        log.add(
            first[other],
            Code.MIXED_PREFERENCE_AND_CHAT,
            f"The file mixes {counts['dpo']:,} preference pair(s) (DPO data, first at line "
            f"{first['dpo']}) with {counts['supervised']:,} supervised example(s) (first at "
            f"line {first['supervised']}): a file trains either with DPO or with supervised "
            "fine-tuning. Put each kind in its own file.",
        )
        return (
            f"the file mixes {counts['dpo']:,} preference pair(s) with "
            f"{counts['supervised']:,} supervised example(s)"
        )
    log.add(
        first[other],
        Code.METHOD_MISMATCH,
        f"The method is {resolved}, but the file holds {counts[other]:,} {_KIND[other]}, "
        f"first at line {first[other]}.",
    )
    return f"the method is {resolved} but the file holds {counts[other]:,} {_KIND[other]}"
