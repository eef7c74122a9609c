"""The narrow interface the training loop drives; one implementation per engine.

The loop (scheduling, evaluation cadence, checkpoints, cancellation, metrics, resume) lives
once in :mod:`finetune.trainer`; a backend only knows how to take a step on a batch, score a
batch, and write or read its adapter and optimizer state. Backends import their engine in
their own module, so choosing one never imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from finetune.config import TrainConfig
    from finetune.data import Batch
    from finetune.distributed import Group


@dataclass(frozen=True)
class StepOutput:
    """Loss and greedy accuracy of one batch, over its trained tokens only."""

    loss: float  # mean cross-entropy per trained token
    n_targets: int  # trained tokens in the batch
    n_correct: int  # of which the argmax prediction is right


@dataclass(frozen=True)
class PairOutput:
    """DPO on a batch of pairs (rows ``[chosen..., rejected...]``): the loss and, per pair,
    the policy-to-reference log-ratio of each response (summed over its trained tokens)."""

    loss: float  # mean DPO sigmoid loss over the pairs
    chosen: np.ndarray  # (pairs,) log pi(chosen) - log ref(chosen)
    rejected: np.ndarray  # (pairs,) log pi(rejected) - log ref(rejected)
    n_targets: int  # trained tokens of the chosen responses
    n_correct: int  # of which the argmax prediction is right


class LoRABackend(Protocol):
    """A base model with LoRA layers, an optimizer, and adapter I/O."""

    name: str

    def train_step(self, batch: Batch) -> StepOutput:
        """Forward, backward and one optimizer update on the batch."""
        ...

    def eval_step(self, batch: Batch) -> StepOutput:
        """Loss and accuracy on the batch without updating anything (dropout off)."""
        ...

    def sequence_logprobs(self, batch: Batch) -> np.ndarray:
        """Per row, the summed log-probability of its trained tokens (no update, dropout
        off): the reference of DPO."""
        ...

    def pair_step(self, batch: Batch, reference: np.ndarray, beta: float) -> PairOutput:
        """DPO: forward, backward and one optimizer update on a batch of pairs."""
        ...

    def pair_eval(self, batch: Batch, reference: np.ndarray, beta: float) -> PairOutput:
        """DPO loss and log-ratios on a batch of pairs without updating anything."""
        ...

    def load_adapter_weights(self, directory: Path) -> None:
        """Start the LoRA layers from an adapter folder's weights (same LoRA shape)."""
        ...

    def save_adapter(self, directory: Path) -> None:
        """Write a complete adapter folder (weights + adapter_config.json) into ``directory``."""
        ...

    def save_optimizer(self, directory: Path) -> None:
        """Write the optimizer state (moments and step count) into ``directory``."""
        ...

    def load_checkpoint(self, directory: Path) -> None:
        """Restore adapter weights and optimizer state written by this backend."""
        ...

    def greedy(self, prompt_ids: list[int], max_tokens: int, stop_ids: set[int]) -> list[int]:
        """The model's greedy (argmax) continuation of ``prompt_ids``, dropout off: at most
        ``max_tokens`` new token ids, ending before the first of ``stop_ids`` (which is not
        returned). Updates nothing; the model is back in training mode after."""
        ...


def open_backend(config: TrainConfig, group: Group | None = None) -> LoRABackend:
    """Load the base model for ``config.backend`` and add LoRA layers to it; with a
    ``group`` of several ranks, its training steps are data-parallel over the group."""
    if config.backend == "mlx":
        from finetune.mlx_lora import MLXLoRABackend

        return MLXLoRABackend(config, group)
    from finetune.torch_lora import TorchLoRABackend

    return TorchLoRABackend(config, group)
