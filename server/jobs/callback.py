"""The trainer callback of a job: events, metrics, checkpoints-as-models, cancellation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.callbacks import CheckpointInfo, EvalMetrics, StepMetrics, TrainingCallback
from finetune.evaluation import describe
from server.jobs.naming import checkpoint_model_id
from server.store import Store

log = logging.getLogger(__name__)


class JobCallback(TrainingCallback):
    """Reports a running job's progress to the store, from the runner thread."""

    def __init__(
        self,
        store: Store,
        job_id: str,
        fine_tuned_model: str,
        stop: threading.Event,
        register_checkpoint: Callable[[str, Path], None],
    ) -> None:
        """`register_checkpoint(model id, folder)` persists and serves a checkpoint model."""
        self._store = store
        self._job = job_id
        self._ft = fine_tuned_model
        self._stop = stop
        self._register = register_checkpoint
        self._last_event = 0.0

    def on_step(self, metrics: StepMetrics) -> None:
        remaining = metrics.total_steps - metrics.step
        per_step = metrics.elapsed_s / max(metrics.step, 1)
        self._store.jobs.update(
            self._job,
            step=metrics.step,
            total_steps=metrics.total_steps,
            trained_tokens=metrics.trained_tokens,
            estimated_finish=int(time.time() + remaining * per_step),
        )
        # a metrics event at most every 2 s (and at the last step) keeps the table small
        now = time.monotonic()
        if now - self._last_event >= 2.0 or remaining == 0 or metrics.step == 1:
            self._last_event = now
            self._store.events.add(
                self._job,
                f"Step {metrics.step}/{metrics.total_steps}: "
                f"training loss={metrics.train_loss:.4f}"
                + (
                    f", reward margin={metrics.extras['train_reward_margin']:.4f}"
                    if "train_reward_margin" in metrics.extras
                    else ""
                ),
                type="metrics",
                data={
                    "step": metrics.step,
                    "total_steps": metrics.total_steps,
                    "train_loss": metrics.train_loss,
                    "train_mean_token_accuracy": metrics.train_mean_token_accuracy,
                    "learning_rate": metrics.learning_rate,
                    "tokens_per_second": metrics.tokens_per_second,
                    "trained_tokens": metrics.trained_tokens,
                    "elapsed_s": round(metrics.elapsed_s, 3),
                    **metrics.extras,  # DPO: reward margin, log-ratios, preference accuracy
                },
            )

    def on_eval(self, metrics: EvalMetrics) -> None:
        self._store.events.add(
            self._job,
            f"Step {metrics.step}: validation loss={metrics.valid_loss:.4f}",
            type="metrics",
            data={
                "step": metrics.step,
                "valid_loss": metrics.valid_loss,
                "valid_mean_token_accuracy": metrics.valid_mean_token_accuracy,
                **metrics.extras,
            },
        )

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        model_id = checkpoint_model_id(self._ft, info.step)
        metrics = {"step": float(info.step), **info.metrics}
        self._store.checkpoints.add(
            self._job,
            step_number=info.step,
            fine_tuned_model_checkpoint=model_id,
            path=str(info.path),
            metrics=metrics,
        )
        self._store.jobs.update(self._job, last_checkpoint_step=info.step)
        self._register(model_id, info.path)
        self._store.events.add(self._job, f"Checkpoint created at step {info.step}: {model_id}")

    def on_evaluation(self, phase: str, metrics: dict[str, Any]) -> None:
        """The before/after evaluation: a metrics event, and the job's `evaluation` field
        (`{"before": {...}, "after": {...}}`, each phase written as it is measured)."""
        job = self._store.jobs.get(self._job)
        merged = {**((job.evaluation if job else None) or {}), phase: metrics}
        self._store.jobs.update(self._job, evaluation=merged)
        self._store.events.add(
            self._job, describe(phase, metrics), type="metrics", data={"phase": phase, **metrics}
        )

    def should_stop(self) -> bool:
        return self._stop.is_set()
