"""LoRA fine-tuning: one config, callbacks, MLX and torch backends.

``import finetune`` stays light (pydantic and the standard library): numpy, the tokenizer and
the engines load only when training, converting or plotting starts.

    from finetune import TrainConfig, train
    result = train(TrainConfig(model_path=..., train_file=..., out_dir=..., n_epochs=3,
                               batch_size=1, learning_rate=BASE_LEARNING_RATE))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatfmt.hyper import auto_epochs
from finetune.callbacks import (
    CallbackList,
    CheckpointInfo,
    EvalMetrics,
    StepMetrics,
    TrainingCallback,
)
from finetune.config import (
    BASE_LEARNING_RATE,
    LoRAConfig,
    TrainConfig,
    auto_batch_size,
    resolve_learning_rate,
    total_steps,
)

if TYPE_CHECKING:
    from finetune.data import TrainingDataError
    from finetune.trainer import TrainResult, train

__all__ = [
    "BASE_LEARNING_RATE",
    "CallbackList",
    "CheckpointInfo",
    "EvalMetrics",
    "LoRAConfig",
    "StepMetrics",
    "TrainConfig",
    "TrainResult",
    "TrainingCallback",
    "TrainingDataError",
    "auto_batch_size",
    "auto_epochs",
    "resolve_learning_rate",
    "total_steps",
    "train",
]

_LAZY = {"train": "finetune.trainer", "TrainResult": "finetune.trainer"}
_LAZY["TrainingDataError"] = "finetune.data"


def __getattr__(name: str) -> Any:
    """Load the trainer (and numpy with it) on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")
