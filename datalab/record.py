"""Everything datalab does to one line on its own: parse, convert, clean, validate, scan.

A conversation becomes a :class:`ChatRecord`; a preference pair (DPO data) a
:class:`~datalab.preference.PreferencePair`, handled by :mod:`datalab.pairs`.

:func:`process_line` is a pure function of the line and the config, so it can run in worker
processes (:func:`process_chunk`) while the parent keeps the cross-record work (dedupe,
balance, split). The result is a small picklable :class:`Outcome`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from datalab.clean import clean_record
from datalab.config import PipelineConfig
from datalab.dedupe import MinHasher, dedupe_text, exact_key
from datalab.diversity import figures
from datalab.formats import PAIR_FORMATS, ChatRecord, Format, detect_format, parse_record
from datalab.pairs import (
    PAIR_FORMAT_NAMES,
    check_pair_rules,
    clean_pair,
    input_group,
    pair_chars,
    pair_text,
    redact_pair,
)
from datalab.pii import find_pii, redact
from datalab.preference import PreferencePair, parse_pair
from datalab.problems import Problem, Severity
from datalab.reader import Line, line_problem, parse_line
from datalab.split import group_of
from datalab.validate import check_rules
from datalab.writers import chat_line

# (line, code, field, message, severity): cheaper to pickle than Problem models.
ProblemTuple = tuple[int, str, str | None, str, Severity]
#: What a valid line becomes: a conversation, or a preference pair.
Record = ChatRecord | PreferencePair


class Outcome(NamedTuple):
    """What became of one line. Fields after ``changed`` are set only for valid records."""

    line: int
    fmt: str | None
    problems: list[ProblemTuple]
    changed: bool = False
    valid: bool = False
    json_line: str = ""
    norm_text: str = ""
    key: bytes = b""
    group: str = ""
    group_source: str = ""
    category: str | None = None
    answer_chars: int = 0
    prompt_chars: int = -1  # -1: no user turn
    first_word: str = ""
    pii: tuple[str, ...] = ()
    n_chars: int = 0  # normalised text plus ChatML framing: what a tokenizer would see
    sig: bytes = b""  # MinHash signature, when computed in a worker process


def is_pair(o: Outcome) -> bool:
    """Whether the outcome is a preference pair's."""
    return o.fmt in PAIR_FORMAT_NAMES


def _category(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _redacted(record: ChatRecord) -> ChatRecord:
    msgs = [
        m
        if not m.content
        else m.model_copy(update={"content": redact(m.content, find_pii(m.content))})
        for m in record.messages
    ]
    return record.model_copy(update={"messages": msgs})


def _tuples(problems: list[Problem]) -> list[ProblemTuple]:
    return [(p.line, p.code, p.field, p.message, p.severity) for p in problems]


def process_line(
    line: int,
    data: bytes | int,
    config: PipelineConfig,
    changes: Counter[str],
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[Outcome, Record | None]:
    """Run every per-record stage on one line; also returns the record when it is valid.

    ``data`` is the line's bytes, or its size when it was too long to read (see reader).
    """
    issue = line_problem(line, data, config.max_line_bytes)
    if issue is not None:
        return Outcome(line, None, [(line, issue[0], None, issue[1], issue[2])]), None
    assert isinstance(data, bytes)
    obj, bad = parse_line(data, line)
    if bad is not None:
        return Outcome(line, None, [(line, bad[0], None, bad[1], "error")]), None
    detected = detect_format(obj)
    if detected in PAIR_FORMATS:
        return _process_pair(line, obj, detected, config, changes, count_tokens)
    fmt, record, problems = parse_record(obj, line)
    name = fmt.value if fmt is not None else None
    if record is None:
        return Outcome(line, name, _tuples(problems)), None
    cleaned = clean_record(record, changes)
    changed = cleaned is not record
    problems = check_rules(cleaned, line, config, count_tokens)
    if problems:
        return Outcome(line, name, _tuples(problems), changed), None
    norm = dedupe_text(cleaned)
    # One PII scan over the joined texts: no pattern matches across a newline.
    joined = "\n".join([m.content or "" for m in cleaned.messages])
    kinds = tuple(f.kind for f in find_pii(joined))
    if kinds and config.redact_pii:
        cleaned = _redacted(cleaned)
    group, source = group_of(obj, cleaned)
    fig = figures(cleaned)
    outcome = Outcome(
        line=line,
        fmt=name,
        problems=[],
        changed=changed,
        valid=True,
        json_line=chat_line(cleaned),
        norm_text=norm,
        key=exact_key(norm),
        group=group,
        group_source=source,
        category=_category(obj, config.balance_field),
        answer_chars=fig.answer_chars,
        prompt_chars=fig.prompt_chars,
        first_word=fig.first_word,
        pii=kinds,
        n_chars=len(norm) + 20 * len(cleaned.messages),
    )
    return outcome, cleaned


def _process_pair(
    line: int,
    obj: dict[str, Any],
    fmt: Format,
    config: PipelineConfig,
    changes: Counter[str],
    count_tokens: Callable[[str], int] | None,
) -> tuple[Outcome, PreferencePair | None]:
    """:func:`process_line` for a preference pair."""
    pair, problems = parse_pair(obj, line, fmt)
    if pair is None:
        return Outcome(line, fmt.value, _tuples(problems)), None
    cleaned = clean_pair(pair, changes)
    changed = cleaned is not pair
    problems = check_pair_rules(cleaned, line, config, fmt, count_tokens)
    if problems:
        return Outcome(line, fmt.value, _tuples(problems), changed), None
    norm = pair_text(cleaned)
    joined = "\n".join([m.content or "" for m in cleaned.records()[1].messages])
    joined += "\n" + (cleaned.non_preferred.content or "")
    kinds = tuple(f.kind for f in find_pii(joined))
    if kinds and config.redact_pii:
        cleaned = redact_pair(cleaned)
    fig = figures(cleaned.records()[1])
    outcome = Outcome(
        line=line,
        fmt=fmt.value,
        problems=[],
        changed=changed,
        valid=True,
        json_line=cleaned.json_line(),
        norm_text=norm,
        key=exact_key(norm),
        group=input_group(cleaned),
        group_source="input",
        category=_category(obj, config.balance_field),
        answer_chars=fig.answer_chars,
        prompt_chars=fig.prompt_chars,
        first_word=fig.first_word,
        pii=kinds,
        n_chars=pair_chars(cleaned),
    )
    return outcome, cleaned


def process_chunk(
    chunk: list[Line], config: PipelineConfig, hasher: MinHasher | None = None
) -> tuple[list[tuple[Any, ...]], Counter[str]]:
    """Process a run of lines in a worker process; returns outcomes and cleaning changes.

    Outcomes travel as plain tuples (``Outcome._make`` rebuilds them): pickling a named
    tuple costs ~2.5x more. With a ``hasher`` the valid outcomes also carry their MinHash
    signature, computed here for the whole chunk at once, so the parent only looks it up.
    """
    changes: Counter[str] = Counter()
    outcomes = [process_line(n, data, config, changes)[0] for n, data in chunk]
    if hasher is not None:
        # Pairs are not near-deduplicated (see datalab.pairs): no signature for them.
        valid = [i for i, o in enumerate(outcomes) if o.valid and not is_pair(o)]
        sigs = hasher.signatures([outcomes[i].norm_text.encode("utf-8") for i in valid])
        for i, row in zip(valid, sigs, strict=True):
            outcomes[i] = outcomes[i]._replace(sig=row.tobytes())
    return [tuple(o) for o in outcomes], changes
