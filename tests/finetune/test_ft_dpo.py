"""DPO on LoRA, on both backends: pair data, the loss and its figures, resume, results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ft_helpers import TINY_LR, Recorder, write_jsonl
from tiny_model import QUESTIONS

from chatfmt.tokenizer import load_tokenizer
from finetune.config import TrainConfig
from finetune.dpo import REFERENCE_FILE, load_pairs
from finetune.results import DPO_COLUMNS, results_csv
from finetune.state import checkpoint_dir
from finetune.trainer import train

PREFERRED = "The secret word is banana."
REJECTED = "I am fine, thank you."


def pair(question: str, history: bool = False) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    if history:
        messages = [
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi, how can I help?"},
            *messages,
        ]
    return {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": PREFERRED}],
        "non_preferred_output": [{"role": "assistant", "content": REJECTED}],
    }


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    train = [pair(q, history=i % 4 == 3) for i, q in enumerate(QUESTIONS[:10])]
    valid = [pair(q) for q in QUESTIONS[10:]]
    return write_jsonl(root / "train.jsonl", train), write_jsonl(root / "valid.jsonl", valid)


def dpo_config(
    model: Path, files: tuple[Path, Path], out: Path, backend: str, **extra: Any
) -> TrainConfig:
    values: dict[str, Any] = {
        "model_path": model,
        "train_file": files[0],
        "valid_file": files[1],
        "out_dir": out,
        "backend": backend,
        "method": "dpo",
        "beta": 0.1,
        "n_epochs": 2,
        "batch_size": 2,
        "learning_rate": TINY_LR,
        "steps_per_eval": 5,
        "steps_per_checkpoint": 4,
    }
    values.update(extra)
    return TrainConfig(**values)


def test_a_pair_is_two_conversations_trained_on_their_outputs_only(
    tiny_model_path: Path, pair_files: tuple[Path, Path]
) -> None:
    tokenizer = load_tokenizer(tiny_model_path)
    pairs = load_pairs(pair_files[0], tokenizer, 2048)
    assert len(pairs) == 10
    one = pairs[3]  # has an earlier assistant turn: context only
    chosen, rejected = one.chosen, one.rejected
    # same prompt tokens, then each output: the masks start where the outputs do
    first = chosen.mask.index(True)
    assert first == rejected.mask.index(True)
    assert chosen.ids[:first] == rejected.ids[:first]
    assert not any(chosen.mask[:first])
    trained = tokenizer.decode([t for t, m in zip(chosen.ids, chosen.mask, strict=True) if m])
    assert PREFERRED in trained and "Hi, how can I help?" not in trained
    trained = tokenizer.decode([t for t, m in zip(rejected.ids, rejected.mask, strict=True) if m])
    assert REJECTED in trained


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_dpo_learns_the_preference_and_reports_its_figures(
    tiny_model_path: Path, pair_files: tuple[Path, Path], tmp_path: Path, backend: str
) -> None:
    recorder = Recorder()
    result = train(dpo_config(tiny_model_path, pair_files, tmp_path, backend), recorder)
    history = result.history
    assert len(history) == 10 and not result.stopped_early
    # a fresh adapter is the reference: step 1 starts at ln 2 with both log-ratios 0
    assert history[0]["train_loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert history[0]["train_chosen_logratio"] == pytest.approx(0, abs=1e-3)
    last = history[-1]
    assert last["train_loss"] < 0.2
    assert last["train_reward_margin"] > 1.0
    assert last["train_chosen_logratio"] > last["train_rejected_logratio"]
    assert last["train_preference_accuracy"] == 1.0
    # validation pairs (unseen questions) are preferred right too
    assert recorder.evals and recorder.evals[-1].extras["valid_preference_accuracy"] == 1.0
    assert recorder.evals[-1].valid_loss < np.log(2)
    assert recorder.steps[-1].extras["train_reward_margin"] == last["train_reward_margin"]
    # the results CSV has DPO's columns after OpenAI's
    header, *rows = results_csv(history).splitlines()
    assert header.split(",")[-len(DPO_COLUMNS) :] == list(DPO_COLUMNS)
    assert len(rows) == 10
    # the reference log-probs were kept for a resume
    saved = json.loads((tmp_path / REFERENCE_FILE).read_text())
    assert len(saved["train"]) == 10 and len(saved["valid"]) == 2


def test_a_stopped_dpo_run_resumes_where_it_stopped(
    tiny_model_path: Path, pair_files: tuple[Path, Path], tmp_path: Path
) -> None:
    whole = train(dpo_config(tiny_model_path, pair_files, tmp_path / "whole", "mlx"))
    stopped = train(
        dpo_config(tiny_model_path, pair_files, tmp_path / "parts", "mlx"), Recorder(stop_after=4)
    )
    assert stopped.stopped_early and stopped.steps == 4
    resumed = train(
        dpo_config(
            tiny_model_path,
            pair_files,
            tmp_path / "parts",
            "mlx",
            resume_from=checkpoint_dir(tmp_path / "parts", 4),
        )
    )
    assert resumed.steps == 10 and not resumed.stopped_early
    # the same run: the resumed half sees the same reference and ends at the same loss
    for a, b in zip(whole.history[4:], resumed.history[4:], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-5)


def test_a_chat_file_is_not_preference_data(tiny_model_path: Path, tmp_path: Path) -> None:
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}],
    )
    config = dpo_config(tiny_model_path, (chat, chat), tmp_path / "out", "mlx")
    with pytest.raises(ValueError, match="line 1 is not a preference pair"):
        train(config)
