"""Reading messy JSONL: every bad line is reported with its number, nothing raises."""

from __future__ import annotations

import json
from pathlib import Path

from dl_helpers import WriteLines

from datalab.formats import check_jsonl_objects
from datalab.problems import ProblemLog
from datalab.reader import ReadStats, read_records

pytest_plugins = ["dl_fixtures"]


def _read(
    path: Path, max_line_bytes: int = 2 * 1024 * 1024
) -> tuple[list[int], ProblemLog, ReadStats]:
    log, stats = ProblemLog(), ReadStats()
    lines = [r.line for r in read_records(path, log, stats, max_line_bytes)]
    return lines, log, stats


def _codes(log: ProblemLog) -> list[tuple[int, str]]:
    return [(p.line, p.code) for p in log.problems]


def test_each_bad_line_is_reported_with_its_number(write_lines: WriteLines) -> None:
    path = write_lines(
        [
            {"a": 1},
            "{broken",
            "[1, 2]",
            '"just a string"',
            "",
            "   ",
            b'{"text": "caf\xe9"}',
            '{"x": NaN}',
            {"b": 2},
        ]
    )
    lines, log, stats = _read(path)
    assert lines == [1, 9]
    assert _codes(log) == [
        (2, "invalid_json"),
        (3, "not_an_object"),
        (4, "not_an_object"),
        (5, "empty_line"),
        (6, "empty_line"),
        (7, "invalid_utf8"),
        (8, "invalid_json"),
    ]
    assert stats.n_lines == 9 and stats.n_empty == 2
    assert log.problems[0].message.startswith(
        "Invalid file format. Line 2 is not a valid JSON object."
    )
    assert "It is an array" in log.problems[1].message
    assert "0xe9" in log.problems[5].message
    assert {p.severity for p in log.problems if p.code == "empty_line"} == {"warning"}


def test_bom_and_crlf_are_read_and_reported_once(write_lines: WriteLines) -> None:
    path = write_lines([b"\xef\xbb\xbf" + b'{"a": 1}', {"b": 2}, {"c": 3}], newline=b"\r\n")
    lines, log, stats = _read(path)
    assert lines == [1, 2, 3]
    assert stats.bom and stats.n_crlf == 3
    assert _codes(log) == [(1, "utf8_bom"), (1, "crlf_line_endings")]
    assert "3 line(s)" in log.problems[1].message


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    lines, log, _ = _read(path)
    assert lines == [1, 2] and not log.problems


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    lines, log, stats = _read(path)
    assert lines == [] and stats.n_lines == 0
    assert _codes(log) == [(0, "empty_file")]


def test_a_10_mb_line_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    big = json.dumps({"text": "x" * 10_000_000}).encode()
    path.write_bytes(b'{"a": 1}\n' + big + b'\n{"b": 2}\n')
    lines, log, stats = _read(path)
    assert lines == [1, 3]
    assert _codes(log) == [(2, "line_too_long")]
    assert "10,000,013 bytes" in log.problems[0].message  # with its newline
    assert stats.n_bytes == path.stat().st_size


def test_a_10_mb_line_parses_when_the_limit_allows(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "y" * 10_000_000}) + "\n")
    lines, log, _ = _read(path, max_line_bytes=16 * 1024 * 1024)
    assert lines == [1] and not log.problems


def test_problem_log_caps_the_list_but_counts_everything() -> None:
    log = ProblemLog(max_problems=3)
    for i in range(10):
        log.add(i + 1, "invalid_json", "bad")
    assert len(log.problems) == 3 and log.counts["invalid_json"] == 10 and log.truncated


def test_upload_check_uses_openai_wording(write_lines: WriteLines) -> None:
    path = write_lines([{"a": 1}, "", {"b": 2}, "not json", "[]"])
    problems = check_jsonl_objects(path)
    assert [p.line for p in problems] == [4, 5]
    assert problems[0].message.startswith("Invalid file format. Line 4 is not a valid JSON object.")


def test_upload_check_accepts_good_files_and_flags_empty_ones(
    write_lines: WriteLines, tmp_path: Path
) -> None:
    assert check_jsonl_objects(write_lines([{"a": 1}, {"b": 2}], newline=b"\r\n")) == []
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"\n\n")
    assert [p.code for p in check_jsonl_objects(empty)] == ["empty_file"]


def test_upload_check_stops_listing_at_the_cap(write_lines: WriteLines) -> None:
    path = write_lines(["bad"] * 50)
    assert len(check_jsonl_objects(path, max_problems=5)) == 5
