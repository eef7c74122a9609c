"""Convert a JSONL file between formats: chat, Alpaca, text (ChatML / Alpaca prompts), or
preference pairs in OpenAI's DPO shape (from prompt/chosen/rejected)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel

from datalab.formats import PAIR_FORMATS, detect_format, parse_record
from datalab.preference import parse_pair
from datalab.problems import Code, Problem, ProblemLog
from datalab.reader import ReadStats, read_records
from datalab.writers import chat_line, json_line, render_chatml, to_alpaca, to_alpaca_prompt

Target = Literal["chat", "alpaca", "text", "preference"]
Template = Literal["chatml", "alpaca"]


class ConvertResult(BaseModel):
    """What a conversion did."""

    n_records: int
    n_written: int
    formats: dict[str, int]
    problems: list[Problem]
    problem_counts: dict[str, int]


def convert_file(
    src: Path, to: Target, out: IO[str], template: Template = "chatml", max_problems: int = 1000
) -> ConvertResult:
    """Stream ``src`` into ``out`` in format ``to``; records that cannot convert are reported.

    Mixed input formats are fine here: unifying them is what conversion is for.
    """
    log = ProblemLog(max_problems)
    stats = ReadStats()
    formats: Counter[str] = Counter()
    written = 0
    for raw in read_records(src, log, stats):
        if to == "preference":
            written += _write_pair(raw.obj, raw.line, out, log, formats)
            continue
        fmt, record, problems = parse_record(raw.obj, raw.line)
        if fmt is not None:
            formats[fmt.value] += 1
        if record is None:
            log.extend(problems)
            continue
        line: str | None
        if to == "chat":
            line = chat_line(record)
        elif to == "alpaca":
            obj = to_alpaca(record)
            line = json_line(obj) if obj is not None else None
        else:
            text = render_chatml(record) if template == "chatml" else to_alpaca_prompt(record)
            line = json_line({"text": text}) if text is not None else None
        if line is None:
            log.add(
                raw.line,
                Code.NOT_CONVERTIBLE,
                f"Line {raw.line}: only single-turn user/assistant records without tools can "
                f"be written as {to if to == 'alpaca' else 'Alpaca prompts'}; skipped.",
            )
            continue
        out.write(line)
        written += 1
    return ConvertResult(
        n_records=stats.n_lines - stats.n_empty,
        n_written=written,
        formats=dict(formats),
        problems=log.problems,
        problem_counts=dict(log.counts),
    )


def _write_pair(
    obj: dict[str, Any], line: int, out: IO[str], log: ProblemLog, formats: Counter[str]
) -> int:
    """Write one record as an OpenAI preference line; 1 if written, 0 if reported instead."""
    fmt = detect_format(obj)
    if fmt is not None:
        formats[fmt.value] += 1
    if fmt not in PAIR_FORMATS:
        log.add(
            line,
            Code.NOT_CONVERTIBLE,
            f"Line {line}: only preference pairs (prompt/chosen/rejected or OpenAI's "
            "input/preferred_output/non_preferred_output) can be written as preference; skipped.",
        )
        return 0
    pair, problems = parse_pair(obj, line, fmt)
    if pair is None:
        log.extend(problems)
        return 0
    out.write(pair.json_line())
    return 1
