"""prepare/check end to end on small hand-made files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from dl_helpers import WriteLines, chat, good_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datalab.pipeline import PipelineConfig, Report, check, prepare

pytest_plugins = ["dl_fixtures"]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _long_answer(seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(3000)}" for _ in range(80)) + "."


def _messy(write_lines: WriteLines) -> Path:
    long = _long_answer(1)
    near = long.replace(long.split()[40], "CHANGED", 1)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    rows: list[Any] = good_records(12, category="geo")
    rows += [
        chat("Tell me a long story please.", long),  # 13
        chat("Tell me a long story please.", near),  # 14: near duplicate of 13
        dict(rows[0]),  # 15: exact duplicate of 1
        chat(
            "  QUESTION 0: what should I know about  rivers number 0? ",
            rows[0]["messages"][1]["content"],
        ),
        "{not json",  # 17
        b'{"text": "\xff\xfe"}',  # 18
        "",  # 19
        chat("Hi", "Ok"),  # 20: too short, too few words
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {
            "messages": [
                {"role": "system", "content": "Use tools."},
                {"role": "user", "content": "Look up the weather in Lisbon."},
                {"role": "assistant", "content": "Let me check.", "weight": 0},
                {"role": "assistant", "content": "It is sunny in Lisbon today."},
            ],
            "tools": tools,
        },  # 22
    ]
    return write_lines(rows)


def test_prepare_messy_file(write_lines: WriteLines, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = prepare(_messy(write_lines), out, PipelineConfig(valid_fraction=0.2, seed=3))
    assert report.n_lines == 22 and report.n_records == 21
    assert report.n_valid == 17 and report.n_invalid == 4
    assert report.dedupe.n_exact == 2 and report.dedupe.n_near == 1
    assert {(c.kept_line, tuple(c.duplicate_lines)) for c in report.dedupe.clusters} == {
        (1, (15, 16)),
        (13, (14,)),
    }
    assert report.n_kept == 14 == report.n_train + report.n_valid_split
    assert report.n_valid_split == 3 and report.split.leaked_groups == 0
    codes = {(p.line, p.code) for p in report.problems}
    assert {
        (17, "invalid_json"),
        (18, "invalid_utf8"),
        (19, "empty_line"),
        (20, "answer_too_short"),
        (20, "too_few_words"),
        (21, "unknown_role"),
    } <= codes
    assert report.can_train and report.blocking_reasons == []
    assert report.cleaning.records_changed >= 1
    train, valid = _lines(out / "train.jsonl"), _lines(out / "valid.jsonl")
    assert len(train) == report.n_train and len(valid) == report.n_valid_split
    assert all(set(r) <= {"messages", "tools"} for r in train + valid)
    tool_rec = next(r for r in train + valid if "tools" in r)
    assert tool_rec["messages"][2] == {"role": "assistant", "content": "Let me check.", "weight": 0}
    on_disk = Report.model_validate_json((out / "report.json").read_text())
    assert on_disk.n_train == report.n_train and on_disk.outputs["train"] == str(
        out / "train.jsonl"
    )
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "train.jsonl", "valid.jsonl"]


def test_prepare_is_reproducible_and_seeded(write_lines: WriteLines, tmp_path: Path) -> None:
    src = write_lines(good_records(60))
    a = prepare(src, tmp_path / "a", PipelineConfig(seed=1))
    b = prepare(src, tmp_path / "b", PipelineConfig(seed=1))
    c = prepare(src, tmp_path / "c", PipelineConfig(seed=2))
    assert (tmp_path / "a/valid.jsonl").read_bytes() == (tmp_path / "b/valid.jsonl").read_bytes()
    assert (tmp_path / "a/valid.jsonl").read_bytes() != (tmp_path / "c/valid.jsonl").read_bytes()
    assert a.n_valid_split == b.n_valid_split == c.n_valid_split == 6


def test_identical_prompts_never_straddle_the_split(
    write_lines: WriteLines, tmp_path: Path
) -> None:
    rows = []
    for i in range(40):
        for j in range(3):  # three different answers to each prompt
            rows.append(
                chat(
                    f"Prompt number {i} about {i * 17} things?",
                    f"Answer variant {j} for prompt {i}, fine.",
                )
            )
    report = prepare(
        write_lines(rows), tmp_path, PipelineConfig(valid_fraction=0.25, near_dedupe=False)
    )
    prompts = lambda p: {r["messages"][0]["content"] for r in _lines(p)}  # noqa: E731
    assert report.n_valid_split == 30
    assert not prompts(tmp_path / "train.jsonl") & prompts(tmp_path / "valid.jsonl")


def test_group_ids_keep_conversations_together(write_lines: WriteLines, tmp_path: Path) -> None:
    rows = [dict(r, conversation_id=f"c{i // 4}") for i, r in enumerate(good_records(80))]
    report = prepare(write_lines(rows), tmp_path, PipelineConfig(valid_fraction=0.2))
    assert report.split.group_sources == {"conversation_id": 80}
    assert report.split.n_groups == 20 and report.n_valid_split == 16
    valid_answers = {r["messages"][1]["content"] for r in _lines(tmp_path / "valid.jsonl")}
    answers = [r["messages"][1]["content"] for r in rows]
    for g in range(20):
        sides = {answers[i] in valid_answers for i in range(4 * g, 4 * g + 4)}
        assert len(sides) == 1


def test_too_few_examples_cannot_train(write_lines: WriteLines, tmp_path: Path) -> None:
    report = prepare(write_lines([*good_records(3), "bad"]), tmp_path)
    assert not report.can_train
    assert report.blocking_reasons == ["fewer than 10 valid examples (found 3)"]
    assert report.problem_counts["too_few_examples"] == 1
    assert report.n_valid_split == 0 and report.split.note is not None
    assert "Cannot train: fewer than 10 valid examples (found 3)." in report.summary()


def test_zero_byte_file(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    report = prepare(src, tmp_path / "out")
    assert not report.can_train and "the file is empty" in report.blocking_reasons
    assert (tmp_path / "out/train.jsonl").read_text() == ""
    assert report.estimate is None and report.tokens is None


def test_mixed_formats_block_unless_allowed(write_lines: WriteLines, tmp_path: Path) -> None:
    rows: list[Any] = good_records(12)
    rows.insert(
        5, {"instruction": "Name a colour of the sky.", "output": "The sky is usually blue."}
    )
    src = write_lines(rows)
    report = check(src)
    assert not report.can_train and report.formats.mixed
    assert (
        report.formats.counts == {"chat": 12, "alpaca": 1}
        and report.formats.first_line["alpaca"] == 6
    )
    assert any(p.code == "mixed_formats" and p.line == 6 for p in report.problems)
    allowed = check(src, PipelineConfig(allow_mixed_formats=True))
    assert allowed.can_train and allowed.n_valid == 13


def test_validation_file_is_cleaned_not_split_and_overlaps_dropped(
    write_lines: WriteLines, tmp_path: Path
) -> None:
    train = good_records(20)
    valid = [*good_records(25)[20:], train[3], "oops"]
    report = prepare(write_lines(train), tmp_path / "o", valid_src=write_lines(valid))
    assert report.n_train == 20 and report.n_valid_split == 5 and report.split.from_file
    assert report.valid_file is not None and report.valid_file.n_overlap_dropped == 1
    assert report.valid_file.problem_counts["invalid_json"] == 1
    assert any(
        p.file == "valid" and p.code == "valid_overlaps_train" and p.line == 6
        for p in report.problems
    )
    assert len(_lines(tmp_path / "o/valid.jsonl")) == 5


def test_redaction_reaches_the_output(write_lines: WriteLines, tmp_path: Path) -> None:
    rows = good_records(12)
    rows[2] = chat("How do I reach support?", "Write to help@example.com or call +351 912 345 678.")
    report = prepare(write_lines(rows), tmp_path, PipelineConfig(redact_pii=True, valid_fraction=0))
    assert report.pii.counts["email"] == 1 and report.pii.counts["phone"] == 1
    assert report.pii.lines == {"email": [3], "phone": [3]}
    text = (tmp_path / "train.jsonl").read_text()
    assert "[EMAIL]" in text and "[PHONE]" in text and "help@example.com" not in text
    unredacted = check(write_lines(rows))
    assert any("personal data" in w for w in unredacted.warnings)


def test_balance_cap(write_lines: WriteLines, tmp_path: Path) -> None:
    rows = [dict(r, category="a" if i < 30 else "b") for i, r in enumerate(good_records(40))]
    report = prepare(write_lines(rows), tmp_path, PipelineConfig(balance_cap=10, valid_fraction=0))
    assert report.balance is not None and report.balance.after == {"a": 10, "b": 10}
    assert report.n_balanced_out == 20 and report.n_train == 20
    assert len(_lines(tmp_path / "train.jsonl")) == 20


def test_tokens_guidance_and_estimate(
    write_lines: WriteLines, tmp_path: Path, dl_tokenizer: Any
) -> None:
    config = PipelineConfig(goal="style", max_answer_tokens=100)
    rows = good_records(30)
    rows[4] = chat("Say it long.", "the quick brown fox jumps over the lazy dog " * 20)
    report = check(write_lines(rows), config, dl_tokenizer)
    assert report.tokens is not None and report.tokens.rendering == "chat_template"
    assert 128 < report.tokens.p95 <= 256 and report.tokens.recommended_max_length == 256
    assert (5, "answer_too_long") in {(p.line, p.code) for p in report.problems}
    assert report.guidance is not None and report.guidance.level == "below_minimum"
    assert report.estimate is not None and not report.estimate.tokens_estimated
    assert report.estimate.epochs == 4  # 26 examples: auto epochs reach 100 examples seen
    capped = check(write_lines(rows), PipelineConfig(max_length=130), dl_tokenizer)
    assert capped.tokens is not None and capped.tokens.n_over_max_length > 0
    over = [p for p in capped.problems if p.code == "over_max_length"]
    assert len(over) == capped.tokens.n_over_max_length and over[0].severity == "warning"


def test_strict_mode(write_lines: WriteLines) -> None:
    src = write_lines([*good_records(12), "bad"])
    assert check(src).can_train
    strict = check(src, PipelineConfig(strict=True))
    assert not strict.can_train and "strict" in strict.blocking_reasons[0]


def test_worker_processes_give_identical_output(write_lines: WriteLines, tmp_path: Path) -> None:
    rows: list[Any] = good_records(300)
    rows[10:20] = rows[:10]
    for at in (50, 120, 200, 260):
        rows[at:at] = ["{bad", "", json.dumps({"text": "z" * 3000})]
    src = write_lines(rows)
    config = {"max_line_bytes": 2048, "max_problems": 7}  # truncated: the kept 7 must match
    one = prepare(src, tmp_path / "one", PipelineConfig(workers=1, **config))
    two = prepare(src, tmp_path / "two", PipelineConfig(workers=2, **config))
    assert one.workers == 0 and two.workers == 2
    for name in ("train.jsonl", "valid.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    skip = {"duration_s", "outputs", "config", "workers"}
    assert one.model_dump(exclude=skip) == two.model_dump(exclude=skip)
    lines = [p.line for p in two.problems]
    assert lines == sorted(lines) and two.problems_truncated
    assert two.problem_counts["line_too_long"] == 4 and two.problem_counts["empty_line"] == 4


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(max_size=60), max_size=12))
def test_garbage_never_raises(tmp_path: Path, lines: list[bytes]) -> None:
    src = tmp_path / "garbage.jsonl"
    src.write_bytes(b"\n".join(lines))
    report = check(src)
    assert not report.can_train
    assert report.n_records + report.diversity.n_examples >= 0
