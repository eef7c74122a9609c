"""Training configuration and OpenAI's "auto" hyperparameter rules.

One typed config serves both backends. The pydantic models own validation: a
:class:`TrainConfig` that constructs is a run that can start (files aside, which are
checked when training begins).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BASE_LEARNING_RATE: float = 2e-4
"""The LoRA learning rate that OpenAI's ``learning_rate_multiplier`` multiplies ("auto" = 1).

Adam (bias-corrected), constant schedule, ``alpha / rank = 2`` — the usual LoRA setting
(2e-4 at alpha/r = 2 is also what mlx-lm's default 1e-5 at scale 20 amounts to, within 2x).
Measured on SmolLM2-135M-Instruct, 12 examples all answering one fixed sentence, batch 1:
at 2e-4 the validation loss goes 4.1 → 0.83 over 3 epochs and reaches 0.05 in the 4th, well
inside the 9 epochs OpenAI's rule gives 12 examples, and after 3 epochs unrelated prompts
still get the model's own answers; at 1e-3 everything collapses onto the fixed reply within
12 steps. A real model gets 2e-4; the tiny random test model is another matter, see
:data:`TINY_MODEL_LR_MULTIPLIER`.
"""

TINY_MODEL_LR_MULTIPLIER: float = 100.0
"""The multiplier tests use on the tiny random model (64 wide, 2 layers): at 2e-2 it learns a
fixed reply in 36 steps of batch 1 on both backends; at 1e-2 it only half learns it. Random
weights give LoRA's small update nothing to lean on — never a setting for a real model."""

DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
)
"""Attention projections, named by their path inside one transformer block.

That path form is what mlx-lm's ``lora_parameters.keys`` expects, and PEFT matches it as a
module-name suffix, so the same names drive both backends (Llama/Mistral/Qwen/SmolLM naming).
"""

MAX_AUTO_BATCH_SIZE = 4

DEFAULT_DPO_BETA: float = 0.1
"""DPO's beta when the job says "auto" (OpenAI's documented default)."""


class LoRAConfig(BaseModel):
    """LoRA adapter shape. ``scale = alpha / rank`` multiplies the low-rank update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    num_layers: int | None = Field(
        None,
        ge=-1,
        description="Adapt the last N transformer blocks; None or -1 adapts all of them.",
    )
    max_length: int = Field(2048, ge=8, description="Examples are truncated to this many tokens.")
    target_modules: tuple[str, ...] = Field(
        DEFAULT_TARGET_MODULES,
        min_length=1,
        description="Linear layers to adapt, as paths inside a block (e.g. 'mlp.down_proj').",
    )

    @field_validator("num_layers")
    @classmethod
    def _no_zero_layers(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("num_layers must be positive, or -1/None for all layers")
        return None if value == -1 else value

    @field_validator("target_modules")
    @classmethod
    def _clean_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(dict.fromkeys(name.strip().strip(".") for name in value))
        if any(not name for name in cleaned):
            raise ValueError("target_modules holds an empty name")
        return cleaned

    @property
    def scale(self) -> float:
        """The factor on the low-rank update (mlx-lm's ``scale``, PEFT's ``scaling``)."""
        return self.alpha / self.rank

    def layers_to_adapt(self, n_layers: int) -> int:
        """How many of the model's last blocks get LoRA layers."""
        if self.num_layers is None:
            return n_layers
        if self.num_layers > n_layers:
            raise ValueError(f"num_layers={self.num_layers} but the model has {n_layers} layers")
        return self.num_layers


class TrainConfig(BaseModel):
    """One fine-tuning run. Hyperparameters are resolved numbers (no "auto" here)."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path = Field(description="Base model folder (Hugging Face layout).")
    train_file: Path = Field(description="Chat JSONL: one {'messages': [...]} per line.")
    valid_file: Path | None = Field(None, description="Optional validation JSONL.")
    out_dir: Path = Field(description="Receives adapter/ and checkpoints/step-N/.")
    backend: Literal["mlx", "torch"] = "mlx"
    n_epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=4096)
    learning_rate: float = Field(gt=0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**32)
    steps_per_eval: int = Field(50, ge=1, description="Validation every N steps and at the end.")
    steps_per_checkpoint: int = Field(100, ge=1, description="Checkpoint every N steps.")
    eval_batches: int | None = Field(
        None, ge=1, description="Cap on validation batches per evaluation; None = whole set."
    )
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    resume_from: Path | None = Field(
        None, description="A checkpoint dir (checkpoints/step-N) to continue from."
    )
    method: Literal["supervised", "dpo"] = Field(
        "supervised",
        description="supervised: chat JSONL; dpo: OpenAI preference JSONL (one pair per line).",
    )
    beta: float = Field(DEFAULT_DPO_BETA, gt=0, description="DPO's beta (ignored when supervised).")
    init_adapter: Path | None = Field(
        None,
        description="An adapter folder whose weights the LoRA layers start from (fine-tuning "
        "a fine-tune); its LoRA shape must be this run's.",
    )
    quantize: Literal[4, 8] | None = Field(
        None, description="Quantize a float base to this many bits before adding LoRA (QLoRA)."
    )

    @model_validator(mode="after")
    def _distinct_paths(self) -> TrainConfig:
        if self.resume_from is not None and self.resume_from.resolve() == self.out_dir.resolve():
            raise ValueError("resume_from must be a checkpoint folder, not out_dir itself")
        return self


def resolve_learning_rate(multiplier: float | None = None) -> float:
    """``BASE_LEARNING_RATE × multiplier``; ``None`` ("auto") means a multiplier of 1."""
    if multiplier is None:
        return BASE_LEARNING_RATE
    if not multiplier > 0:
        raise ValueError("learning_rate_multiplier must be positive")
    return BASE_LEARNING_RATE * multiplier


def auto_batch_size(n_examples: int) -> int:
    """``batch_size: "auto"``: OpenAI's ~0.2% of the examples, capped at 4 instead of 256.

    Small batches give small datasets more optimizer updates (OpenAI uses 1 there too), and a
    cap of 4 keeps a step's memory and latency laptop-sized: ``clamp(ceil(0.002 n), 1, 4)``.

    >>> [auto_batch_size(n) for n in (10, 500, 1000, 1500, 100000)]
    [1, 1, 2, 3, 4]
    """
    if n_examples < 1:
        raise ValueError("n_examples must be positive")
    return max(1, min(MAX_AUTO_BATCH_SIZE, math.ceil(n_examples * 0.002)))


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Batches per epoch; the last batch of an epoch may be smaller."""
    if n_examples < 1 or batch_size < 1:
        raise ValueError("n_examples and batch_size must be positive")
    return math.ceil(n_examples / batch_size)


def total_steps(n_examples: int, n_epochs: int, batch_size: int) -> int:
    """Optimizer steps of a run: ``n_epochs × ceil(n_examples / batch_size)``."""
    if n_epochs < 1:
        raise ValueError("n_epochs must be positive")
    return n_epochs * steps_per_epoch(n_examples, batch_size)
