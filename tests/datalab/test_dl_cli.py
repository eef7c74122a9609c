"""`pomar data check|prepare|convert` through datalab.cli.main."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dl_helpers import WriteLines, chat, good_records

from datalab.cli import main

pytest_plugins = ["dl_fixtures"]


def test_check_prints_a_report_and_exits_zero(
    write_lines: WriteLines, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(write_lines(good_records(20)))]) == 0
    out = capsys.readouterr().out
    assert "Ready to train" in out and "Overview" in out


def test_check_exits_one_when_the_file_cannot_train(
    write_lines: WriteLines, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_lines([*good_records(3), "{bad"])
    assert main(["check", str(src), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["can_train"] is False
    assert report["blocking_reasons"] == ["fewer than 10 valid examples (found 3)"]
    assert [(p["line"], p["code"]) for p in report["problems"]] == [
        (0, "too_few_examples"),
        (4, "invalid_json"),
    ]


def test_usage_errors_exit_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write_lines: WriteLines
) -> None:
    assert main(["check", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["check", str(write_lines(good_records(10))), "--min-answer-chars", "many"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    assert "no such file" in capsys.readouterr().err


def test_thresholds_are_flags(write_lines: WriteLines, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [chat(f"Capital of country {i}?", f"City{i}.") for i in range(12)]
    src = str(write_lines(rows))
    assert main(["check", src, "--json"]) == 1
    capsys.readouterr()
    args = [
        "check",
        src,
        "--json",
        "--min-answer-chars",
        "2",
        "--min-words",
        "1",
        "--no-dedupe",
        "--max-urls",
        "none",
        "--valid-fraction",
        "0",
        "--n-epochs",
        "2",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["min_answer_chars"] == 2 and report["config"]["max_urls"] is None
    assert report["config"]["dedupe"] is False and report["estimate"]["epochs"] == 2
    assert report["n_train"] == 12


def test_prepare_writes_the_three_files(write_lines: WriteLines, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert main(["prepare", str(write_lines(good_records(30))), "--out", str(out), "--json"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "train.jsonl", "valid.jsonl"]
    assert len((out / "valid.jsonl").read_text().splitlines()) == 3


def test_model_is_resolved_and_gives_tokens_and_memory(
    write_lines: WriteLines, dl_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def resolve(name: str) -> str:
        if name != "tiny-model":
            raise KeyError(f"model {name!r} not found")
        return str(dl_tokenizer_dir)

    src = str(write_lines(good_records(20)))
    assert main(["check", src, "--model", "tiny-model", "--goal", "style", "--json"], resolve) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"]["rendering"] == "chat_template"
    assert report["tokens"]["model_context"] == 1024
    assert report["estimate"]["memory"]["fits"] is True
    assert report["guidance"]["goal"] == "style"
    assert main(["check", src, "--model", "other"], resolve) == 2


def _convert(src: Path, to: str, tmp_path: Path, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    out = tmp_path / f"converted-{to}.jsonl"
    rc = main(["convert", str(src), "--to", to, "--out", str(out), *extra])
    return rc, [json.loads(line) for line in out.read_text().splitlines()]


def test_convert_between_formats(
    write_lines: WriteLines, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_lines(
        [
            {"instruction": "Translate to English.", "input": "Bom dia", "output": "Good morning"},
            {"prompt": "2+2?", "completion": "4"},
        ]
    )
    rc, rows = _convert(src, "chat", tmp_path)
    assert rc == 0 and rows[0]["messages"][0] == {
        "role": "user",
        "content": "Translate to English.\n\nBom dia",
    }
    rc, rows = _convert(src, "alpaca", tmp_path)
    assert rc == 0 and rows[1] == {"instruction": "2+2?", "input": "", "output": "4"}
    rc, rows = _convert(src, "text", tmp_path)
    assert rows[1] == {
        "text": "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    }
    rc, rows = _convert(src, "text", tmp_path, "--template", "alpaca")
    assert rows[1]["text"].endswith("### Instruction:\n2+2?\n\n### Response:\n4")
    assert "converted 2 of 2 records" in capsys.readouterr().err


def test_convert_reports_what_it_cannot_convert(
    write_lines: WriteLines, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    multi = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    rc, rows = _convert(write_lines([multi, chat("q", "a"), "junk"]), "alpaca", tmp_path)
    assert rc == 1 and rows == [{"instruction": "q", "input": "", "output": "a"}]
    err = capsys.readouterr().err
    assert "not_convertible" in err and "invalid_json" in err
