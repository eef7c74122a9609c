"""Streaming JSONL reading that survives any input.

The file is read in binary, one line at a time with a byte cap, so a 10 MB line, a missing
final newline, a UTF-8 BOM, CRLF endings or bytes that are not UTF-8 are each reported with
their line number instead of raising. Memory stays bounded by ``max_line_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic_core import from_json

from datalab.problems import Code, ProblemLog, Severity

_BOM = b"\xef\xbb\xbf"
# A line as read: its number and its bytes, or its size (an int) when it was too long.
Line = tuple[int, bytes | int]
DEFAULT_MAX_LINE_BYTES = 2 * 1024 * 1024


@dataclass
class ReadStats:
    """What the reader saw, filled in as lines stream past."""

    n_lines: int = 0
    n_bytes: int = 0
    n_empty: int = 0
    n_crlf: int = 0
    bom: bool = False


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A line that parsed as a JSON object."""

    line: int
    obj: dict[str, Any]


def _skip_rest_of_line(f: BinaryIO, chunk: int) -> int:
    skipped = 0
    while True:
        part = f.readline(chunk)
        skipped += len(part)
        if not part or part.endswith(b"\n"):
            return skipped


def _describe(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    return "a number"


def not_json_object_message(line: int, detail: str) -> str:
    """OpenAI's wording for an upload whose line is not a JSON object, plus the reason."""
    return f"Invalid file format. Line {line} is not a valid JSON object. {detail}"


def parse_line(data: bytes, line: int) -> tuple[Any, tuple[str, str] | None]:
    """Decode one non-empty line: (the JSON object, None) or (None, (code, message))."""
    try:
        # pydantic-core's JSON parser (Rust) is ~2x faster than json.loads on these lines,
        # and it refuses NaN/Infinity, which are not JSON.
        obj = from_json(data, allow_inf_nan=False)
    except ValueError as e:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as u:
            return None, (
                Code.INVALID_UTF8,
                f"Line {line} is not valid UTF-8 (byte 0x{data[u.start]:02x} at position "
                f"{u.start}); save the file as UTF-8.",
            )
        detail = f"{str(e)[:1].upper()}{str(e)[1:]}."
        return None, (Code.INVALID_JSON, not_json_object_message(line, detail))
    if not isinstance(obj, dict):
        return None, (Code.NOT_AN_OBJECT, not_json_object_message(line, f"It is {_describe(obj)}."))
    return obj, None


def line_problem(
    line: int, data: bytes | int, max_line_bytes: int
) -> tuple[str, str, Severity] | None:
    """What is wrong with a line before parsing: too long (``data`` is then its size) or empty."""
    if isinstance(data, int):
        return (
            Code.LINE_TOO_LONG,
            f"Line {line} is {data:,} bytes, over the {max_line_bytes:,}-byte limit; skipped.",
            "error",
        )
    if not data or data.isspace():
        return Code.EMPTY_LINE, f"Line {line} is empty; skipped.", "warning"
    return None


def iter_lines(
    path: Path,
    log: ProblemLog,
    stats: ReadStats,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Line]:
    """Yield (line number, content) for every line, without its line ending.

    Lines are read in binary with a byte cap: for a line longer than ``max_line_bytes``
    the content is its size (an int), and the line is skipped without being held in
    memory. Per-line findings are left to :func:`line_problem`, so they stay in file order
    wherever lines are processed; whole-file ones (BOM, CRLF endings, an empty file) are
    logged here after the last line.
    """
    limit = max_line_bytes + 2  # room for "\r\n"
    first_crlf = 0
    with path.open("rb") as f:
        readline = f.readline
        lineno = 0
        while raw := readline(limit):
            lineno += 1
            size = len(raw)
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                if size - len(raw) == 2:
                    stats.n_crlf += 1
                    first_crlf = first_crlf or lineno
            elif size >= limit:
                size += _skip_rest_of_line(f, 1 << 20)
                stats.n_bytes += size
                yield lineno, size
                continue
            stats.n_bytes += size
            if lineno == 1 and raw.startswith(_BOM):
                stats.bom = True
                raw = raw[3:]
            if not raw or raw.isspace():
                stats.n_empty += 1
            yield lineno, raw
        stats.n_lines = lineno
    if stats.bom:
        log.add(1, Code.UTF8_BOM, "The file starts with a UTF-8 BOM; ignored.", severity="warning")
    if stats.n_crlf:
        log.add(
            first_crlf,
            Code.CRLF_LINE_ENDINGS,
            f"{stats.n_crlf:,} line(s) end with CRLF (Windows line endings), first at line "
            f"{first_crlf}; read as plain newlines.",
            severity="warning",
        )
    if stats.n_bytes == 0:
        log.add(0, Code.EMPTY_FILE, "The file is empty (0 bytes).")


def read_records(
    path: Path,
    log: ProblemLog,
    stats: ReadStats,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[RawRecord]:
    """Stream the JSON objects of a JSONL file, logging every line that is not one."""
    for line, data in iter_lines(path, log, stats, max_line_bytes):
        issue = line_problem(line, data, max_line_bytes)
        if issue is not None:
            code, message, severity = issue
            log.add(line, code, message, severity=severity)
            continue
        assert isinstance(data, bytes)
        obj, problem = parse_line(data, line)
        if problem is not None:
            log.add(line, *problem)
        else:
            yield RawRecord(line, obj)
