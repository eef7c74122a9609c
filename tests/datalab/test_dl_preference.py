"""Preference pairs (DPO data): detection, per-line defects, prompt/chosen/rejected, dedupe,
the leak-free split by prompt, token figures and the estimate, the CLI, the prepared files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from dl_helpers import WriteLines, chat, good_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datalab.cli import main
from datalab.estimate import EstimateConfig, ModelShape, estimate_memory
from datalab.formats import Format, detect_format, parse_record
from datalab.pairs import input_text
from datalab.pipeline import PipelineConfig, Report, check, prepare
from datalab.preference import PreferencePair, parse_pair, read_pairs

pytest_plugins = ["dl_fixtures"]

CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}


def msg(role: str, content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def pair(prompt: str, good: str, bad: str, **extra: Any) -> dict[str, Any]:
    """A valid pair in OpenAI's shape."""
    return {
        "input": {"messages": [msg("user", prompt)]},
        "preferred_output": [msg("assistant", good)],
        "non_preferred_output": [msg("assistant", bad)],
        **extra,
    }


def good_pairs(n: int) -> list[dict[str, Any]]:
    """``n`` distinct valid pairs, each with its own prompt."""
    topics = ["rivers", "mountains", "bread", "violins", "comets", "tides", "ferns", "glass"]
    return [
        pair(
            f"Question {i}: what should I know about {topics[i % 8]} number {i * 7919 % 1000}?",
            f"Answer {i}: {topics[i % 8]} matter because of reason {i} and detail {i * 31}.",
            f"Dunno {i}.",
        )
        for i in range(n)
    ]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- detection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "fmt"),
    [
        (pair("a", "b", "c"), Format.PREFERENCE),
        ({"input": {"messages": []}}, Format.PREFERENCE),
        ({"messages": [], "preferred_output": []}, Format.PREFERENCE),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, Format.PROMPT_CHOSEN_REJECTED),
        ({"chosen": [], "rejected": []}, Format.PROMPT_CHOSEN_REJECTED),
        # The existing formats detect as before.
        ({"prompt": "a", "completion": "b"}, Format.PROMPT_COMPLETION),
        ({"prompt": "a"}, Format.PROMPT_COMPLETION),
        ({"instruction": "a", "input": "ctx", "output": "b"}, Format.ALPACA),
        ({"instruction": "a", "input": {"x": 1}, "output": "b"}, Format.ALPACA),
        ({"messages": [{"role": "user", "content": "a"}]}, Format.CHAT),
        ({"input": "just a string", "output": "b"}, None),
        ({"text": "a"}, Format.TEXT),
    ],
)
def test_detection(obj: dict[str, Any], fmt: Format | None) -> None:
    assert detect_format(obj) is fmt


def test_prompt_completion_files_still_train_as_chat(write_lines: WriteLines) -> None:
    rows = [
        {
            "prompt": f"Question {i} about item {i * 37}?",
            "completion": f"Answer {i} in a few words.",
        }
        for i in range(12)
    ]
    report = check(write_lines(rows))
    assert report.formats.counts == {"prompt_completion": 12}
    assert report.method == "supervised" and report.preference is None and report.can_train


def test_parse_record_names_a_pair_instead_of_reading_it_as_chat() -> None:
    fmt, rec, problems = parse_record({"prompt": "q", "chosen": "a", "rejected": "b"}, 3)
    assert fmt is Format.PROMPT_CHOSEN_REJECTED and rec is None
    assert [p.code for p in problems] == ["not_convertible"]


# -- one defect per line ---------------------------------------------------------------------

BAD_TOOL_CALL = {"id": "c", "type": "function", "function": {"arguments": "{}"}}
DEFECTS: list[tuple[dict[str, Any], str, str | None]] = [
    (  # a top-level `messages` instead of `input.messages`
        {
            "messages": [msg("user", "Hi there?")],
            **{k: v for k, v in pair("", "Ok fine.", "No").items() if k != "input"},
        },
        "missing_input_messages",
        "input.messages",
    ),
    (
        {**pair("q", "Good answer here.", "bad"), "input": {"messages": []}},
        "missing_input_messages",
        "input.messages",
    ),
    (
        {k: v for k, v in pair("Why?", "Because it is.", "No").items() if k != "preferred_output"},
        "missing_output",
        "preferred_output",
    ),
    (
        {**pair("Why?", "Because it is.", "No"), "non_preferred_output": []},
        "missing_output",
        "non_preferred_output",
    ),
    (
        {
            **pair("Why?", "Because it is.", "No"),
            "preferred_output": [
                msg("assistant", "One two three."),
                msg("assistant", "four five six"),
            ],
        },
        "output_not_one_message",
        "preferred_output",
    ),
    (
        {**pair("Why?", "Because it is.", "No"), "non_preferred_output": [msg("user", "Because.")]},
        "output_not_assistant",
        "non_preferred_output[0].role",
    ),
    (
        {**pair("Why?", "Because it is so.", "  because IT is   so. ")},
        "identical_outputs",
        "non_preferred_output",
    ),
    (
        {
            **pair("x", "Because it is.", "No"),
            "input": {"messages": [msg("user", "Why?"), msg("assistant", "Hmm.")]},
        },
        "input_ends_with_assistant",
        "input.messages[1]",
    ),
    (
        {**pair("x", "Because it is.", "No"), "input": {"messages": [msg("system", "Be brief.")]}},
        "input_ends_with_system",
        "input.messages[0]",
    ),
    (
        {
            **pair("Weather?", "x", "No"),
            "preferred_output": [msg("assistant", None, tool_calls=[BAD_TOOL_CALL])],
        },
        "invalid_tool_call",
        "preferred_output[0].tool_calls[0]",
    ),
    (
        {**pair("Why?", "x", "No"), "preferred_output": msg("assistant", "An object, not a list.")},
        "invalid_type",
        "preferred_output",
    ),
    (
        {**pair("x", "Because it is.", "No"), "input": {"messages": [msg("wizard", "Why?")]}},
        "unknown_role",
        "input.messages[0].role",
    ),
    ({**pair("Why?", "   ", "No")}, "empty_content", "preferred_output[0].content"),
    ({**pair("Why?", "It is so.", "No")}, "answer_too_short", "preferred_output[0].content"),
]


def test_each_defect_is_refused_on_its_line(write_lines: WriteLines, tmp_path: Path) -> None:
    fine = good_pairs(12)
    tool_pair = {
        **pair("What is the weather in Lisbon?", "x", "It is probably sunny, I guess."),
        "preferred_output": [msg("assistant", None, tool_calls=[CALL])],
    }
    tool_pair["input"]["tools"] = [{"type": "function", "function": {"name": "weather"}}]
    rows = [*fine, tool_pair, *(d[0] for d in DEFECTS)]
    report = prepare(write_lines(rows), tmp_path / "out")
    first_bad = len(fine) + 2
    found = {(p.line, p.code, p.field) for p in report.problems if p.line >= first_bad}
    expected = {(first_bad + i, code, field) for i, (_, code, field) in enumerate(DEFECTS)}
    assert found == expected
    for p in report.problems:
        if p.line >= first_bad:
            assert p.message.startswith(f"Line {p.line}: ")
    assert report.n_invalid == len(DEFECTS) and report.n_valid == len(fine) + 1
    assert report.method == "dpo" and report.can_train
    kept = _lines(tmp_path / "out" / "train.jsonl") + _lines(tmp_path / "out" / "valid.jsonl")
    assert len(kept) == len(fine) + 1
    # A short non-preferred answer is fine (it is not learned); a tool call is an answer.
    assert any(r["preferred_output"][0].get("tool_calls") == [CALL] for r in kept)
    assert all(set(r) == {"input", "preferred_output", "non_preferred_output"} for r in kept)


def test_messages_explain_the_defect() -> None:
    _, problems = parse_pair(
        {
            **pair("x", "A fine answer.", "No"),
            "input": {"messages": [msg("user", "Why?"), msg("assistant", "Hmm.")]},
        },
        5,
    )
    (p,) = problems
    assert p.message == (
        "Line 5: input.messages ends with an assistant message; it must end with a user (or "
        "tool) message, because preferred_output and non_preferred_output are the assistant's "
        "next turn"
    )
    _, problems = parse_pair(
        {"messages": [msg("user", "q")], "preferred_output": [msg("assistant", "a")]}, 2
    )
    assert [(p.code, p.field) for p in problems] == [
        ("missing_input_messages", "input.messages"),
        ("missing_output", "non_preferred_output"),
    ]
    assert "belongs under `input`" in problems[0].message


def test_tool_calls_and_tool_turns_are_allowed() -> None:
    obj = {
        "input": {
            "messages": [
                msg("user", "Weather in Lisbon?"),
                msg("assistant", None, tool_calls=[CALL]),
                msg("tool", '{"sky": "clear"}', tool_call_id="call_1"),
            ],
            "tools": [{"type": "function", "function": {"name": "weather"}}],
            "parallel_tool_calls": False,
        },
        "preferred_output": [msg("assistant", "Clear skies in Lisbon.")],
        "non_preferred_output": [msg("assistant", None, tool_calls=[CALL])],
    }
    got, problems = parse_pair(obj, 1)
    assert problems == [] and got is not None
    assert got.to_json() == {
        **obj,
        "non_preferred_output": [{"role": "assistant", "tool_calls": [CALL]}],
        "input": {
            **obj["input"],
            "messages": [
                msg("user", "Weather in Lisbon?"),
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_1"},
            ],
        },
    }
    bad = {**obj, "input": {**obj["input"], "parallel_tool_calls": "yes"}}
    assert [p.code for p in parse_pair(bad, 1)[1]] == ["invalid_type"]


def test_a_chat_record_with_a_malformed_tool_call_is_refused_not_a_crash(
    write_lines: WriteLines,
) -> None:
    class Words:
        def encode(self, text: str) -> list[int]:
            return [len(w) for w in text.split()]

    bad = {"messages": [msg("user", "Call it."), msg("assistant", None, tool_calls=[{"oops": 1}])]}
    report = check(write_lines([*good_records(12), bad]), tokenizer=Words())
    assert [(p.line, p.code, p.field) for p in report.problems] == [
        (13, "invalid_tool_call", "messages[1].tool_calls[0]")
    ]


# -- prompt / chosen / rejected ----------------------------------------------------------------


def _pair(obj: dict[str, Any]) -> dict[str, Any]:
    got, problems = parse_pair(obj, 1)
    assert problems == [] and got is not None
    return got.to_json()


def test_prompt_chosen_rejected_strings_become_openai_pairs() -> None:
    assert _pair({"prompt": "2+2?", "chosen": "It is 4.", "rejected": "5", "id": 9}) == {
        "input": {"messages": [{"role": "user", "content": "2+2?"}]},
        "preferred_output": [{"role": "assistant", "content": "It is 4."}],
        "non_preferred_output": [{"role": "assistant", "content": "5"}],
    }
    with_system = _pair({"system": "Be exact.", "prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert with_system["input"]["messages"][0] == {"role": "system", "content": "Be exact."}


def test_prompt_chosen_rejected_message_lists() -> None:
    prompt = [msg("system", "Be kind."), msg("user", "Hi!")]
    explicit = {
        "prompt": prompt,
        "chosen": [msg("assistant", "Hello, how can I help?")],
        "rejected": [msg("assistant", "What.")],
    }
    expected = {
        "input": {"messages": prompt},
        "preferred_output": [msg("assistant", "Hello, how can I help?")],
        "non_preferred_output": [msg("assistant", "What.")],
    }
    assert _pair(explicit) == expected
    # chosen/rejected as whole conversations that repeat the prompt: cut after it
    full = {
        **explicit,
        "chosen": [*prompt, *explicit["chosen"]],
        "rejected": [*prompt, *explicit["rejected"]],
    }
    assert _pair(full) == expected
    # no prompt at all: the conversations' common opening is the prompt (TRL's implicit prompt)
    implicit = {k: v for k, v in full.items() if k != "prompt"}
    assert _pair(implicit) == expected


@pytest.mark.parametrize(
    ("obj", "code", "field"),
    [
        ({"chosen": "a", "rejected": "b"}, "missing_input_messages", "prompt"),
        ({"prompt": "q", "rejected": "b"}, "missing_output", "chosen"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "missing_output", "chosen"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "invalid_type", "prompt"),
        ({"prompt": "q", "chosen": "Same.", "rejected": "same."}, "identical_outputs", "rejected"),
        (
            {
                "prompt": "q",
                "chosen": [msg("assistant", "a"), msg("assistant", "b")],
                "rejected": "c",
            },
            "output_not_one_message",
            "chosen",
        ),
        (
            {"prompt": [msg("user", "q"), msg("assistant", "a")], "chosen": "b", "rejected": "c"},
            "input_ends_with_assistant",
            "prompt",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": [msg("user", "c")]},
            "output_not_assistant",
            "rejected.role",
        ),
    ],
)
def test_prompt_chosen_rejected_defects(obj: dict[str, Any], code: str, field: str) -> None:
    got, problems = parse_pair(obj, 4)
    assert got is None
    assert [(p.line, p.code, p.field) for p in problems] == [(4, code, field)]


def test_convert_to_preference(
    write_lines: WriteLines, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_lines(
        [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, chat("q", "a"), pair("x", "y", "z")]
    )
    out = tmp_path / "pairs.jsonl"
    assert main(["convert", str(src), "--to", "preference", "--out", str(out)]) == 1
    rows = _lines(out)
    assert rows == [_pair({"prompt": "2+2?", "chosen": "4", "rejected": "5"}), pair("x", "y", "z")]
    err = capsys.readouterr().err
    assert "not_convertible" in err and "converted 2 of 3 records to preference" in err


# -- whole-file rules: one method per file ----------------------------------------------------


def test_a_file_mixing_pairs_and_chat_is_refused(write_lines: WriteLines) -> None:
    rows = [*good_pairs(12), *good_records(3)]
    for allow in (False, True):
        report = check(write_lines(rows), PipelineConfig(allow_mixed_formats=allow))
        assert not report.can_train
        assert report.blocking_reasons[0] == (
            "the file mixes 12 preference pair(s) with 3 supervised example(s)"
        )
        (p,) = [p for p in report.problems if p.code == "mixed_preference_and_chat"]
        assert p.line == 13 and "Put each kind in its own file" in p.message
        assert "mixed_formats" not in report.problem_counts


def test_the_method_must_match_the_records(write_lines: WriteLines) -> None:
    report = check(write_lines(good_pairs(12)), PipelineConfig(method="supervised"))
    assert not report.can_train and report.method == "supervised"
    assert report.blocking_reasons[0] == (
        "the method is supervised but the file holds 12 preference pair(s) (DPO data)"
    )
    assert [p.line for p in report.problems if p.code == "method_mismatch"] == [1]
    report = check(write_lines(good_records(12)), PipelineConfig(method="dpo"))
    assert not report.can_train and report.problem_counts["method_mismatch"] == 1
    assert check(write_lines(good_pairs(12)), PipelineConfig(method="dpo")).can_train


def test_a_validation_file_of_the_other_kind_is_refused(write_lines: WriteLines) -> None:
    report = check(write_lines(good_pairs(12)), valid_src=write_lines(good_records(3)))
    assert not report.can_train
    assert report.blocking_reasons == [
        "validation file: the method is dpo but the file holds 3 supervised example(s)"
    ]


# -- dedupe -----------------------------------------------------------------------------------


def test_exact_duplicate_pairs_are_removed(write_lines: WriteLines, tmp_path: Path) -> None:
    long_prompt = " ".join(f"word{i}" for i in range(300)) + "?"
    base = pair("What is the capital of France?", "Paris is the capital.", "Lyon is the capital.")
    rows = [
        *good_pairs(12),
        base,  # 13
        pair(
            "  what is the CAPITAL of France? ", "Paris is  the capital.", "lyon IS the capital."
        ),  # 14: dup of 13
        pair(
            "What is the capital of France?", "Lyon is the capital.", "Paris is the capital."
        ),  # 15: swapped
        pair(long_prompt, "First fine answer here.", "No."),  # 16
        pair(long_prompt, "Second fine answer here.", "No."),  # 17: same prompt, other pair
    ]
    report = prepare(write_lines(rows), tmp_path / "out")
    assert report.dedupe.n_exact == 1 and report.dedupe.n_near == 0
    assert [(c.kept_line, c.duplicate_lines) for c in report.dedupe.clusters] == [(13, [14])]
    assert report.n_kept == 16
    assert report.preference is not None and report.preference.max_pairs_per_prompt == 2


# -- the split keeps each prompt on one side ----------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, 15), st.booleans()), min_size=1, max_size=60),
    st.floats(min_value=0.05, max_value=0.5),
    st.integers(min_value=0, max_value=2**32),
)
def test_the_split_never_puts_one_prompt_on_both_sides(
    prompts: list[tuple[int, bool]], fraction: float, seed: int
) -> None:
    rows = []
    for i, (p, shout) in enumerate(prompts):
        text = f"Prompt number {p} asks about thing {p * 13}?"
        rows.append(
            pair(text.upper() if shout else f"  {text}", f"Answer {i} is a good one.", f"Bad {i}.")
        )
    config = PipelineConfig(valid_fraction=fraction, seed=seed, min_examples=1, near_dedupe=False)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "pairs.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        report = prepare(src, Path(d) / "out", config)
        train = {input_text(p) for p in read_pairs(Path(d) / "out" / "train.jsonl")}
        valid = {input_text(p) for p in read_pairs(Path(d) / "out" / "valid.jsonl")}
    assert train.isdisjoint(valid)
    assert report.split.leaked_groups == 0 and report.split.group_sources == {"input": len(rows)}
    assert len(train | valid) == len({p for p, _ in prompts}) == report.split.n_groups


def test_pairs_are_grouped_by_input_not_by_id(write_lines: WriteLines, tmp_path: Path) -> None:
    rows = [{**r, "id": f"row-{i}"} for i, r in enumerate(good_pairs(10))]
    rows += [
        {**pair("Shared prompt?", f"Answer {i} is fine.", "No."), "id": f"s{i}"} for i in range(10)
    ]
    report = prepare(write_lines(rows), tmp_path / "out", PipelineConfig(valid_fraction=0.3))
    valid = [p.input.messages[0].content for p in read_pairs(tmp_path / "out" / "valid.jsonl")]
    train = [p.input.messages[0].content for p in read_pairs(tmp_path / "out" / "train.jsonl")]
    assert report.n_valid_split > 0 and not set(valid) & set(train)


# -- tokens, the estimate, the report ---------------------------------------------------------


def test_token_figures_and_the_dpo_estimate(
    write_lines: WriteLines, dl_tokenizer_dir: Path, dl_tokenizer: Any, tmp_path: Path
) -> None:
    rows = good_pairs(20)
    spec = ModelShape.from_hf_config(json.loads((dl_tokenizer_dir / "config.json").read_text()))
    report = prepare(write_lines(rows), tmp_path / "out", tokenizer=dl_tokenizer, model_spec=spec)
    pr, tok, est = report.preference, report.tokens, report.estimate
    assert pr is not None and pr.tokens is not None and tok is not None and est is not None
    assert (pr.n_pairs, pr.n_prompts, pr.max_pairs_per_prompt) == (20, 20, 1)

    def count(messages: list[dict[str, Any]]) -> int:
        return len(dl_tokenizer.encode(dl_tokenizer.apply_chat_template(messages, tokenize=False)))

    prompts = [count(r["input"]["messages"]) for r in rows]
    longest = [
        max(
            count(r["input"]["messages"] + r[k])
            for k in ("preferred_output", "non_preferred_output")
        )
        for r in rows
    ]
    assert pr.tokens.prompt.max == max(prompts) and pr.tokens.longest.max == max(longest)
    assert pr.tokens.preferred.min > pr.tokens.non_preferred.max  # long answers vs "Dunno i."
    assert tok.max == max(longest) and tok.total == sum(longest)  # max_length judges the longer
    train_longest = sum(
        max(
            count(p.input.model_dump(exclude_none=True)["messages"] + [o.to_json()])
            for o in (p.preferred, p.non_preferred)
        )
        for p in read_pairs(tmp_path / "out" / "train.jsonl")
    )
    assert est.sequences_per_example == 2 and est.tokens_per_epoch == 2 * train_longest
    assert "DPO" in est.message
    doubled = EstimateConfig(batch_size=2 * EstimateConfig().batch_size)
    assert est.memory == estimate_memory(spec, doubled, tok.max_length)


def test_without_a_tokenizer_the_estimate_doubles_the_characters(write_lines: WriteLines) -> None:
    rows = good_pairs(12)
    dpo = check(write_lines(rows), PipelineConfig(valid_fraction=0))
    sft = check(
        write_lines(
            [
                chat(r["input"]["messages"][0]["content"], r["preferred_output"][0]["content"])
                for r in rows
            ]
        ),
        PipelineConfig(valid_fraction=0),
    )
    assert dpo.estimate is not None and sft.estimate is not None
    assert dpo.estimate.tokens_estimated and dpo.estimate.sequences_per_example == 2
    # each pair: the prompt with its longer output, twice (the longer is the chat's answer)
    assert abs(dpo.estimate.tokens_per_epoch - 2 * sft.estimate.tokens_per_epoch) <= 2 * len(rows)


# -- prepared files and the CLI -----------------------------------------------------------------


def test_prepared_files_hold_openai_pairs_a_trainer_reads(
    write_lines: WriteLines, tmp_path: Path
) -> None:
    rows = [
        *good_pairs(20),
        {"prompt": "Say hi politely.", "chosen": "Hello, nice to meet you!", "rejected": "hi"},
    ]
    report = prepare(write_lines(rows), tmp_path / "out", PipelineConfig(allow_mixed_formats=True))
    assert report.can_train and report.method == "dpo"
    train = list(read_pairs(Path(report.outputs["train"])))
    valid = list(read_pairs(Path(report.outputs["valid"])))
    assert (len(train), len(valid)) == (report.n_train, report.n_valid_split) == (19, 2)
    assert all(isinstance(p, PreferencePair) for p in train + valid)
    converted = [p for p in train + valid if p.input.messages[0].content == "Say hi politely."]
    prompt, chosen, rejected = converted[0].records()
    assert [m.role for m in prompt.messages] == ["user"]
    assert chosen.messages[-1].content == "Hello, nice to meet you!"
    assert rejected.messages[-1].content == "hi"
    report_json = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report_json["method"] == "dpo" and report_json["preference"]["n_pairs"] == 21


def test_read_pairs_refuses_a_file_that_is_not_pairs(write_lines: WriteLines) -> None:
    with pytest.raises(ValueError, match=r"Line 1: `input\.messages` is missing"):
        list(read_pairs(write_lines(good_records(2))))


def test_cli_check_shows_pairs_problems_and_tokens(
    write_lines: WriteLines, dl_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*good_pairs(12), pair("Why?", "Because it is so.", "because it is so.")]
    src = str(write_lines(rows))
    assert main(["check", src, "--model", str(dl_tokenizer_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long cells
    assert "Format: preference 13; method: preference pairs (DPO)" in out
    assert "Problems by line" in out and "13 │ identical_outputs │ Line 13: preferred_output" in out
    assert "pairs / distinct prompts │ 12 / 12" in out
    assert "prompt tokens min / median / p95 / max" in out
    assert "non-preferred output tokens" in out and "tokens per pair in a step" in out
    assert "Preference pairs (DPO): 13 records: 12 valid, 1 invalid (identical_outputs 1)" in out
    assert main(["check", src, "--json", "--method", "supervised"]) == 1
    report = Report.model_validate_json(capsys.readouterr().out)
    assert report.problem_counts["method_mismatch"] == 1


def test_jobs_and_pomar_tune_refuse_preference_files(
    write_lines: WriteLines, dl_tokenizer_dir: Path, tmp_path: Path
) -> None:
    # The server trains supervised only so far: a pair file must not reach its trainer.
    from server.jobs.validation import prepare_training_data

    data = tmp_path / "data"
    report = prepare_training_data(write_lines(good_pairs(12)), data, dl_tokenizer_dir, seed=1)
    assert not report.can_train and report.method == "supervised"
    assert report.problem_counts["method_mismatch"] == 1


def test_worker_processes_give_identical_pairs(write_lines: WriteLines, tmp_path: Path) -> None:
    rows: list[Any] = good_pairs(150)
    rows[10:15] = rows[:5]  # exact duplicates
    rows[40:40] = [pair("Shared?", f"Shared answer number {i}.", "No.") for i in range(6)]
    rows.append(DEFECTS[0][0])
    src = write_lines(rows)
    one = prepare(src, tmp_path / "one", PipelineConfig(workers=1))
    two = prepare(src, tmp_path / "two", PipelineConfig(workers=2))
    assert two.workers == 2 and one.dedupe.n_exact == 5 and one.n_invalid == 1
    for name in ("train.jsonl", "valid.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    skip = {"duration_s", "outputs", "config", "workers"}
    assert one.model_dump(exclude=skip) == two.model_dump(exclude=skip)


def test_personal_data_in_pairs_is_found_and_redacted(
    write_lines: WriteLines, tmp_path: Path
) -> None:
    leaky = pair(
        "Who do I write to?", "Write to ana.silva@example.com today.", "Ask bob@example.org"
    )
    report = prepare(
        write_lines([*good_pairs(12), leaky]),
        tmp_path / "out",
        PipelineConfig(redact_pii=True, valid_fraction=0),
    )
    assert report.pii.records_with_pii == 1 and report.pii.counts["email"] == 2
    (got,) = [
        p
        for p in read_pairs(tmp_path / "out" / "train.jsonl")
        if "Write" in (p.preferred.content or "")
    ]
    assert "@" not in (got.preferred.content or "") + (got.non_preferred.content or "")
