"""What the trainer reports while it runs, and how a caller stops it.

The trainer calls these on its own thread (the server runs it on a worker thread), so an
implementation that touches shared state must synchronise itself; ``should_stop`` is the
one call that goes the other way and is checked before every step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step.

    ``train_loss`` is the mean cross-entropy over the batch's trained tokens and
    ``train_mean_token_accuracy`` the share of them predicted exactly (greedy).
    ``tokens_per_second`` and ``trained_tokens`` count every real token of the batch
    (prompt included, padding excluded) — what OpenAI bills as trained tokens.
    """

    step: int
    total_steps: int
    train_loss: float
    train_mean_token_accuracy: float
    learning_rate: float
    tokens_per_second: float
    trained_tokens: int
    elapsed_s: float
    #: method-specific figures, named as they appear in the results CSV (DPO:
    #: ``train_reward_margin``, ``train_chosen_logratio``, ...)
    extras: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A flat plain dict (JSON-ready), e.g. for a metrics event: extras inline."""
        out = asdict(self)
        out.update(out.pop("extras"))
        return out


@dataclass(frozen=True)
class EvalMetrics:
    """Validation over the validation set after ``step`` steps."""

    step: int
    valid_loss: float
    valid_mean_token_accuracy: float
    #: method-specific figures (DPO: ``valid_reward_margin``, ``valid_preference_accuracy``)
    extras: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A flat plain dict (JSON-ready): extras inline."""
        out = asdict(self)
        out.update(out.pop("extras"))
        return out


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete adapter folder written after ``step`` steps.

    ``metrics`` holds the latest ``step``, ``train_loss``, ``train_mean_token_accuracy``
    and, when a validation set is given, ``valid_loss`` and ``valid_mean_token_accuracy``
    (OpenAI's checkpoint metric names).
    """

    step: int
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)


class TrainingCallback:
    """Receives progress from :func:`finetune.trainer.train`; every method is a no-op here."""

    def on_step(self, metrics: StepMetrics) -> None:
        """After every optimizer step."""

    def on_eval(self, metrics: EvalMetrics) -> None:
        """After every validation pass (every ``steps_per_eval`` steps and at the end)."""

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        """After a checkpoint folder is complete on disk (renamed into place)."""

    def on_evaluation(self, phase: str, metrics: dict[str, Any]) -> None:
        """After the before/after evaluation of a run with a validation set: ``phase`` is
        ``"before"`` (the model as the run starts, before its first step; not repeated when
        a run resumes) or ``"after"`` (after its last step; not when it stopped early).
        ``metrics`` is :mod:`finetune.evaluation`'s dict (``step``, ``valid_loss``,
        ``valid_mean_token_accuracy``, ``n_examples``, ``exact_match``, ``normalized_match``,
        ``n_generated``, ``preference_accuracy`` for DPO, ``elapsed_s``)."""

    def should_stop(self) -> bool:
        """Checked before every step; True stops training after a final checkpoint."""
        return False


class CallbackList(TrainingCallback):
    """Fans out to several callbacks; stops when any of them asks to."""

    def __init__(self, *callbacks: TrainingCallback) -> None:
        self.callbacks = list(callbacks)

    def on_step(self, metrics: StepMetrics) -> None:
        for callback in self.callbacks:
            callback.on_step(metrics)

    def on_eval(self, metrics: EvalMetrics) -> None:
        for callback in self.callbacks:
            callback.on_eval(metrics)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(info)

    def on_evaluation(self, phase: str, metrics: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_evaluation(phase, metrics)

    def should_stop(self) -> bool:
        return any(callback.should_stop() for callback in self.callbacks)
