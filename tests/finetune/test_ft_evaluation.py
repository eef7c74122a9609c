"""The before/after evaluation of a run (finetune/evaluation.py), on both backends.

The fixed-reply run of ft_helpers: before training the tiny random model answers none of
the 3 validation prompts with the reference and its validation loss is ~7.7; after 36
steps MLX answers 2 of 3 exactly ("Tell me a story." still rambles), torch (a different
dropout stream) none of them yet ("The secret word is bananana."), while both bring the
validation loss under 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ft_helpers import SECRET, Recorder, Run, run_in_thread, secret_config, write_jsonl
from ft_helpers import write_secret_data as write_secret
from tiny_model import QUESTIONS

from chatfmt.tokenizer import load_tokenizer
from finetune.evaluation import MAX_NEW_TOKENS, describe, greedy_cases, normalize
from finetune.state import STATE_FILE
from finetune.trainer import train

KEYS = {
    "step",
    "valid_loss",
    "valid_mean_token_accuracy",
    "n_examples",
    "exact_match",
    "normalized_match",
    "n_generated",
    "elapsed_s",
}


@dataclass
class EvalRecorder(Recorder):
    """Also records the before/after evaluations."""

    evaluations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def on_evaluation(self, phase: str, metrics: dict[str, Any]) -> None:
        self.evaluations.append((phase, metrics))


@pytest.fixture(scope="module")
def secret_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_secret(tmp_path_factory.mktemp("secret-data"))


@pytest.fixture(scope="module", params=["mlx", "torch"])
def evaluated_run(
    request: pytest.FixtureRequest,
    tiny_model_path: Path,
    secret_data: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    backend = request.param
    config = secret_config(tiny_model_path, secret_data, tmp_path_factory.mktemp(backend), backend)
    recorder = EvalRecorder()
    return Run(config, run_in_thread(config, recorder), recorder)


def test_before_and_after_move_the_right_way(evaluated_run: Run) -> None:
    result, recorder = evaluated_run.result, evaluated_run.recorder
    assert isinstance(recorder, EvalRecorder)
    assert result.evaluation is not None
    before, after = result.evaluation["before"], result.evaluation["after"]
    assert recorder.evaluations == [("before", before), ("after", after)]
    assert set(before) == set(after) == KEYS  # no preference_accuracy: not DPO
    assert before["n_examples"] == after["n_examples"] == 3
    assert (before["step"], after["step"]) == (0, 36)
    assert before["n_generated"] == after["n_generated"] == 3
    # the random model: far from the reply
    assert before["valid_loss"] > 7
    assert before["exact_match"] == before["normalized_match"] == 0
    # trained: the loss falls by 90%, and the accuracy climbs
    assert after["valid_loss"] < 0.15 * before["valid_loss"]
    assert after["valid_mean_token_accuracy"] > 0.85 > before["valid_mean_token_accuracy"]
    # "after" is the same validation pass as the loop's last one
    assert after["valid_loss"] == pytest.approx(result.last_valid_loss, rel=1e-5)
    assert after["normalized_match"] >= after["exact_match"] >= before["exact_match"]
    if evaluated_run.config.backend == "mlx":
        assert after["exact_match"] == pytest.approx(2 / 3)


def test_the_evaluation_answers_as_the_engine_does(evaluated_run: Run) -> None:
    """The greedy answers are those of mlx_lm / PEFT loading the adapter."""
    from ft_helpers import greedy_mlx, greedy_peft

    config = evaluated_run.config
    generate = greedy_mlx if config.backend == "mlx" else greedy_peft
    after = evaluated_run.result.evaluation["after"]  # type: ignore[index]
    replies = [
        generate(config.model_path, evaluated_run.result.adapter_path, prompt)
        for prompt in ("Hello there!", "What is your name?", "Tell me a story.")
    ]
    assert after["exact_match"] == pytest.approx(sum(r == SECRET for r in replies) / 3)


def test_a_resumed_run_keeps_its_before(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = {"n_epochs": 1, "batch_size": 3, "steps_per_eval": 2, "steps_per_checkpoint": 2}
    config = secret_config(tiny_model_path, secret_data, tmp_path, "mlx", **settings)
    first = EvalRecorder(stop_after=2)
    stopped = train(config, first)
    assert stopped.stopped_early and stopped.steps == 2
    assert [phase for phase, _ in first.evaluations] == ["before"]
    assert stopped.evaluation == {"before": first.evaluations[0][1], "after": None}
    state = json.loads((stopped.adapter_path / STATE_FILE).read_text())
    assert state["evaluation_before"] == first.evaluations[0][1]

    second = EvalRecorder()
    resumed = train(config.model_copy(update={"resume_from": stopped.adapter_path}), second)
    assert [phase for phase, _ in second.evaluations] == ["after"]  # "before" not measured again
    assert resumed.evaluation is not None
    assert resumed.evaluation["before"] == first.evaluations[0][1]
    assert resumed.evaluation["after"] == second.evaluations[0][1]
    assert resumed.evaluation["after"]["step"] == 4
    assert resumed.evaluation["after"]["valid_loss"] < resumed.evaluation["before"]["valid_loss"]


def test_no_validation_set_no_evaluation(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    config = secret_config(
        tiny_model_path, secret_data, tmp_path, "mlx", valid_file=None, n_epochs=1, batch_size=4
    )
    recorder = EvalRecorder()
    result = train(config, recorder)
    assert result.evaluation is None and recorder.evaluations == []


def pair(question: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": SECRET}],
        "non_preferred_output": [{"role": "assistant", "content": "I am fine, thank you."}],
    }


def test_dpo_measures_the_preference_accuracy(tiny_model_path: Path, tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", [pair(q) for q in QUESTIONS[:10]])
    valid_file = write_jsonl(tmp_path / "valid.jsonl", [pair(q) for q in QUESTIONS[10:]])
    config = secret_config(
        tiny_model_path,
        (train_file, valid_file),
        tmp_path / "out",
        "mlx",
        method="dpo",
        beta=0.1,
        n_epochs=2,
        batch_size=2,
    )
    result = train(config)
    assert result.evaluation is not None
    before, after = result.evaluation["before"], result.evaluation["after"]
    assert set(before) == KEYS | {"preference_accuracy"}
    # the policy is the reference before the first step: DPO's loss is ln 2
    assert before["valid_loss"] == pytest.approx(np.log(2), abs=1e-4)
    # absolute log-probabilities: the random model prefers neither reply on purpose
    assert before["preference_accuracy"] == 0.0
    assert after["preference_accuracy"] == 1.0
    assert after["valid_loss"] < 0.1
    assert before["n_examples"] == before["n_generated"] == 2


def test_normalize() -> None:
    assert normalize(' "The  Secret word is\nBANANA!" ') == "the secret word is banana"
    assert normalize("«Ｏｋ»") == "ok"  # NFKC, foreign quotes
    assert normalize("a, b") == "a, b"  # inner punctuation stays
    assert normalize("...") == ""


def test_greedy_cases_prompt_up_to_the_last_trained_reply(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(tiny_model_path)
    records = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "first"},
                {"role": "user", "content": "And?"},
                {"role": "assistant", "content": "second"},
                {"role": "user", "content": "Thanks"},
                {"role": "assistant", "content": "never trained", "weight": 0},
            ]
        },
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
        {
            "messages": [
                {"role": "user", "content": "long"},
                {"role": "assistant", "content": "y" * 2000},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "valid.jsonl", records)
    cases = greedy_cases(path, tokenizer, "supervised", 2048)
    assert [c.reference for c in cases] == ["second", "y" * 2000]  # an empty reply is skipped
    prompt = tokenizer.decode(cases[0].prompt_ids)
    assert prompt.endswith("And?<|im_end|>\n<|im_start|>assistant\n") and "first" in prompt
    assert "second" not in prompt
    assert cases[0].max_tokens == len(tokenizer.encode("second")) + 16
    assert cases[1].max_tokens == MAX_NEW_TOKENS
    assert len(greedy_cases(path, tokenizer, "supervised", 2048, limit=1)) == 1


def test_describe() -> None:
    line = describe(
        "before",
        {"valid_loss": 3.21, "exact_match": 0.0, "normalized_match": 1 / 3, "n_generated": 3},
    )
    assert line == (
        "Evaluation before training: validation loss 3.2100, exact match 0/3 (0%), "
        "normalized match 1/3 (33%)"
    )
