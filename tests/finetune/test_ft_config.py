"""Config validation and OpenAI's "auto" rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from chatfmt.hyper import auto_epochs
from finetune.config import (
    BASE_LEARNING_RATE,
    DEFAULT_TARGET_MODULES,
    LoRAConfig,
    TrainConfig,
    auto_batch_size,
    resolve_learning_rate,
    total_steps,
)


@pytest.mark.parametrize(
    ("n_examples", "epochs"),
    [
        (1, 25),  # 100 examples would need 100 epochs: capped at 25
        (4, 25),
        (10, 10),  # 10 x 3 = 30 < 100 -> ceil(100 / 10)
        (30, 4),  # ceil(100 / 30)
        (34, 3),  # 34 x 3 = 102 >= 100
        (50, 3),
        (5000, 3),
        (8333, 3),  # 24 999 <= 25 000
        (8334, 2),  # 25 002 > 25 000 -> 25 000 // 8334
        (20000, 1),
        (100000, 1),  # cannot stay under 25 000: one epoch at least
    ],
)
def test_auto_epochs_follows_openai_rule(n_examples: int, epochs: int) -> None:
    assert auto_epochs(n_examples) == epochs


def test_auto_batch_size_is_openai_share_capped_for_laptops() -> None:
    assert [auto_batch_size(n) for n in (1, 10, 500, 501, 1000, 1500, 10**6)] == [
        1, 1, 1, 2, 2, 3, 4,
    ]  # fmt: skip


def test_total_steps_counts_partial_last_batch() -> None:
    assert total_steps(12, 3, 1) == 36
    assert total_steps(10, 2, 4) == 6  # 4 + 4 + 2 per epoch
    assert total_steps(3, 5, 8) == 5  # a batch larger than the set is the whole set
    with pytest.raises(ValueError):
        total_steps(0, 1, 1)


def test_learning_rate_is_base_times_multiplier() -> None:
    assert resolve_learning_rate() == BASE_LEARNING_RATE
    assert resolve_learning_rate(2.5) == pytest.approx(2.5 * BASE_LEARNING_RATE)
    with pytest.raises(ValueError):
        resolve_learning_rate(0)


def test_lora_config_defaults_and_rules() -> None:
    lora = LoRAConfig()
    assert lora.target_modules == DEFAULT_TARGET_MODULES
    assert lora.scale == 2.0
    assert lora.layers_to_adapt(30) == 30
    assert LoRAConfig(num_layers=-1).num_layers is None
    assert LoRAConfig(num_layers=4).layers_to_adapt(30) == 4
    with pytest.raises(ValueError, match="num_layers"):
        LoRAConfig(num_layers=40).layers_to_adapt(30)
    for bad in ({"num_layers": 0}, {"rank": 0}, {"alpha": 0}, {"dropout": 1.0}, {"nope": 1}):
        with pytest.raises(ValidationError):
            LoRAConfig(**bad)  # type: ignore[arg-type]
    assert LoRAConfig(target_modules=("mlp.down_proj.", " q_proj")).target_modules == (
        "mlp.down_proj",
        "q_proj",
    )


def test_train_config_validates_numbers(tmp_path: Path) -> None:
    base = {
        "model_path": tmp_path,
        "train_file": tmp_path / "t.jsonl",
        "out_dir": tmp_path / "out",
        "n_epochs": 3,
        "batch_size": 1,
        "learning_rate": 1e-4,
    }
    config = TrainConfig(**base)  # type: ignore[arg-type]
    assert config.backend == "mlx" and config.valid_file is None and config.resume_from is None
    for key, value in (
        ("n_epochs", 0),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("backend", "jax"),
        ("steps_per_eval", 0),
        ("resume_from", tmp_path / "out"),
    ):
        with pytest.raises(ValidationError):
            TrainConfig(**{**base, key: value})  # type: ignore[arg-type]
