"""The training loop: one function, any backend, injected callbacks, cancellable, resumable.

Layout written under ``config.out_dir``::

    checkpoints/step-N/   a complete adapter folder + optimizer state + trainer_state.json
    adapter/              the final adapter (written only when every step ran)

Every folder is built under a temporary name and renamed into place, so a reader (the
server registering a checkpoint model, or a resume after a crash) never sees a half-written
one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatfmt.tokenizer import load_tokenizer
from finetune.backend import LoRABackend, open_backend
from finetune.callbacks import CheckpointInfo, EvalMetrics, StepMetrics, TrainingCallback
from finetune.config import TrainConfig
from finetune.data import batch_plan, load_examples, pad_token_id
from finetune.distributed import Group, Solo
from finetune.evaluation import Evaluator, describe, greedy_cases, stop_token_ids
from finetune.folders import remove_leftovers, write_dir_atomically
from finetune.objective import Objective, Supervised
from finetune.state import (
    STATE_FILE,
    STATE_FORMAT,
    Progress,
    checkpoint_dir,
    read_state,
)
from finetune.state import fingerprint as run_fingerprint

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced. ``adapter_path`` is ``out_dir/adapter`` after a full run, or the
    checkpoint written at the stop step when ``stopped_early``."""

    adapter_path: Path
    steps: int
    total_steps: int
    trained_tokens: int
    stopped_early: bool
    last_train_loss: float | None
    last_valid_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: with a validation set, ``{"before": {...} | None, "after": {...} | None}`` — the
    #: model measured as the run started and as it ended (:mod:`finetune.evaluation`);
    #: "before" comes from the checkpoint on a resume, "after" is None when stopped early.
    #: None without a validation set.
    evaluation: dict[str, Any] | None = None


def train(
    config: TrainConfig, callback: TrainingCallback | None = None, group: Group | None = None
) -> TrainResult:
    """Fine-tune ``config.model_path`` with LoRA on ``config.train_file``.

    Blocks until done; safe to call from a worker thread. ``callback.should_stop()`` is
    polled before every step (and between validation batches): when it turns True the run
    writes a checkpoint at the last finished step and returns with ``stopped_early``.
    Raises :class:`finetune.data.TrainingDataError` for unusable data and ``ValueError``
    for a checkpoint that does not belong to this run.

    With a ``group`` of several ranks (:mod:`finetune.distributed`), every rank calls this
    with the same config and data; each step trains data-parallel, and rank 0's
    ``should_stop`` decides for all. Only rank 0's callback should report or write.
    """
    callback = AgreedStop(callback or TrainingCallback(), group or Solo())
    for path in (config.model_path, config.train_file, config.valid_file, config.resume_from):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"not found: {path}")

    # Data first: a bad file fails in seconds, before any weights are loaded.
    tokenizer = load_tokenizer(config.model_path)
    load = _pair_loader if config.method == "dpo" else load_examples
    train_set: list[Any] = load(config.train_file, tokenizer, config.lora.max_length)
    valid_set: list[Any] = (
        load(config.valid_file, tokenizer, config.lora.max_length) if config.valid_file else []
    )
    plan = batch_plan(len(train_set), config.n_epochs, config.batch_size, config.seed)
    logger.info(
        "%s LoRA (%s): %d examples (%d truncated to %d tokens), %d validation, %d steps",
        config.backend,
        config.method,
        len(train_set),
        sum(example.truncated for example in train_set),
        config.lora.max_length,
        len(valid_set),
        len(plan),
    )
    fingerprint = run_fingerprint(config, len(train_set))
    progress = Progress()
    if config.resume_from is not None:
        progress = read_state(config.resume_from, fingerprint, len(plan))

    remove_leftovers(Path(config.out_dir))
    backend = open_backend(config, group)
    if config.init_adapter is not None:
        backend.load_adapter_weights(config.init_adapter)
    pad_id = pad_token_id(tokenizer)
    objective = _objective(config, backend, train_set, valid_set, pad_id, fingerprint)
    evaluator = _evaluator(config, backend, tokenizer, objective, valid_set, pad_id)
    if evaluator is not None and config.resume_from is None:
        # the model as the job starts: the parent fine-tune's adapter is loaded already, and
        # DPO's reference log-probs were taken before (they do not depend on this)
        progress.evaluation_before = _evaluate(evaluator, "before", 0, callback)
    if config.resume_from is not None:
        backend.load_checkpoint(config.resume_from)
        logger.info(
            "resuming at step %d of %d from %s", progress.step, len(plan), config.resume_from
        )

    loop = _Loop(config, backend, callback, objective)
    stopped = loop.run(plan, progress, fingerprint)

    after: dict[str, Any] | None = None
    if callback.group.rank != 0:
        # the group's collectives end with the loop; rank 0 alone writes and evaluates
        return _rank_result(config, progress, len(plan), stopped)
    if stopped:
        adapter = checkpoint_dir(config.out_dir, progress.step)
        if not (adapter / STATE_FILE).is_file():
            loop.checkpoint(progress, fingerprint)
    else:
        adapter = Path(config.out_dir) / "adapter"
        write_dir_atomically(adapter, backend.save_adapter)
        if evaluator is not None:
            # rank 0's own stop: no collective, the other ranks have returned
            after = _evaluate(evaluator, "after", progress.step, callback.inner)
    return TrainResult(
        adapter_path=adapter,
        steps=progress.step,
        total_steps=len(plan),
        trained_tokens=progress.trained_tokens,
        stopped_early=stopped,
        last_train_loss=progress.latest("train_loss"),
        last_valid_loss=progress.latest("valid_loss"),
        history=progress.history,
        evaluation=(
            {"before": progress.evaluation_before, "after": after}
            if evaluator is not None
            else None
        ),
    )


class AgreedStop(TrainingCallback):
    """A callback whose ``should_stop`` is rank 0's answer on every rank: the ranks of a
    group must stop at the same step, or the others would wait in a collective."""

    def __init__(self, inner: TrainingCallback, group: Group) -> None:
        self.inner, self.group = inner, group

    def should_stop(self) -> bool:
        if self.group.size == 1:
            return self.inner.should_stop()
        mine = self.inner.should_stop() if self.group.rank == 0 else False
        return bool(self.group.all_sum(np.array([int(mine)], dtype=np.int32))[0])

    def on_step(self, metrics: StepMetrics) -> None:
        self.inner.on_step(metrics)

    def on_eval(self, metrics: EvalMetrics) -> None:
        self.inner.on_eval(metrics)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.inner.on_checkpoint(info)

    def on_evaluation(self, phase: str, metrics: dict[str, Any]) -> None:
        self.inner.on_evaluation(phase, metrics)


def _rank_result(config: TrainConfig, progress: Progress, total: int, stopped: bool) -> TrainResult:
    """What a rank other than 0 returns: its figures, and no adapter of its own."""
    return TrainResult(
        adapter_path=Path(config.out_dir),
        steps=progress.step,
        total_steps=total,
        trained_tokens=progress.trained_tokens,
        stopped_early=stopped,
        last_train_loss=progress.latest("train_loss"),
        last_valid_loss=progress.latest("valid_loss"),
    )


def _evaluator(
    config: TrainConfig,
    backend: LoRABackend,
    tokenizer: Any,
    objective: Objective,
    valid_set: list[Any],
    pad_id: int,
) -> Evaluator | None:
    """The run's before/after :class:`finetune.evaluation.Evaluator`; None without a
    validation set."""
    if not objective.has_validation or config.valid_file is None:
        return None
    return Evaluator(
        backend,
        tokenizer,
        objective,
        greedy_cases(config.valid_file, tokenizer, config.method, config.lora.max_length),
        stop_token_ids(tokenizer, config.model_path),
        n_valid=len(valid_set),
        batch_size=config.batch_size,
        cap=config.eval_batches,
        pairs=valid_set if config.method == "dpo" else None,
        pad_id=pad_id,
    )


def _evaluate(
    evaluator: Evaluator, phase: str, step: int, callback: TrainingCallback
) -> dict[str, Any] | None:
    """Run one evaluation after ``step`` steps and report it; None when a stop request cut
    it short."""
    metrics = evaluator.run(callback.should_stop)
    if metrics is None:
        logger.info("evaluation %s training: stopped", phase)
        return None
    metrics = {"step": step, **metrics}
    logger.info("%s", describe(phase, metrics))
    callback.on_evaluation(phase, metrics)
    return metrics


class _Loop:
    """The step loop; split out of :func:`train` so each piece reads on its own."""

    def __init__(
        self,
        config: TrainConfig,
        backend: LoRABackend,
        callback: TrainingCallback,
        objective: Objective,
    ) -> None:
        self.config = config
        self.backend = backend
        self.callback = callback
        self.objective = objective

    def run(self, plan: list[list[int]], progress: Progress, fingerprint: dict[str, Any]) -> bool:
        """Train from ``progress.step`` to the end of ``plan``; True if stopped early."""
        config, total = self.config, len(plan)
        started, elapsed_before = time.perf_counter(), progress.elapsed_s
        for step in range(progress.step + 1, total + 1):
            if self.callback.should_stop():
                return True
            tic = time.perf_counter()
            out = self.objective.step(plan[step - 1])
            seconds = max(time.perf_counter() - tic, 1e-9)
            progress.step = step
            progress.trained_tokens += out.n_tokens
            progress.elapsed_s = elapsed_before + time.perf_counter() - started
            metrics = StepMetrics(
                step=step,
                total_steps=total,
                train_loss=out.loss,
                train_mean_token_accuracy=out.accuracy,
                learning_rate=config.learning_rate,
                tokens_per_second=out.n_tokens / seconds,
                trained_tokens=progress.trained_tokens,
                elapsed_s=progress.elapsed_s,
                extras={f"train_{k}": v for k, v in out.extras.items()},
            )
            row: dict[str, Any] = {
                **metrics.as_dict(),
                "valid_loss": None,
                "valid_mean_token_accuracy": None,
            }
            progress.history.append(row)
            self.callback.on_step(metrics)
            if self.objective.has_validation and (
                step % config.steps_per_eval == 0 or step == total
            ):
                evaluated = self.evaluate(step)
                if evaluated is not None:
                    row.update(evaluated.as_dict())
                    self.callback.on_eval(evaluated)
            if step % config.steps_per_checkpoint == 0:
                self.checkpoint(progress, fingerprint)
        return False

    def evaluate(self, step: int) -> EvalMetrics | None:
        """Validation loss and accuracy; None when a stop request interrupts it."""
        out = self.objective.evaluate(
            self.config.batch_size, self.config.eval_batches, self.callback.should_stop
        )
        if out is None:
            return None
        return EvalMetrics(
            step=step,
            valid_loss=out.loss,
            valid_mean_token_accuracy=out.accuracy,
            extras={f"valid_{k}": v for k, v in out.extras.items()},
        )

    def checkpoint(self, progress: Progress, fingerprint: dict[str, Any]) -> Path:
        """Write ``checkpoints/step-N`` (adapter, optimizer, trainer state) and announce it."""
        target = checkpoint_dir(self.config.out_dir, progress.step)

        def write(directory: Path) -> None:
            self.backend.save_adapter(directory)
            self.backend.save_optimizer(directory)
            state = {
                "format": STATE_FORMAT,
                "backend": self.backend.name,
                "fingerprint": fingerprint,
                "step": progress.step,
                "trained_tokens": progress.trained_tokens,
                "elapsed_s": progress.elapsed_s,
                "history": progress.history,
            }
            if progress.evaluation_before is not None:
                state["evaluation_before"] = progress.evaluation_before
            (directory / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")

        write_dir_atomically(target, write)
        metrics: dict[str, float] = {"step": float(progress.step)}
        for key in ("train_loss", "train_mean_token_accuracy", "valid_loss"):
            value = progress.latest(key)
            if value is not None:
                metrics[key] = float(value)
        valid_accuracy = progress.latest("valid_mean_token_accuracy")
        if valid_accuracy is not None:
            metrics["valid_mean_token_accuracy"] = float(valid_accuracy)
        self.callback.on_checkpoint(
            CheckpointInfo(step=progress.step, path=target, metrics=metrics)
        )
        return target


def _pair_loader(path: Path, tokenizer: Any, max_length: int) -> list[Any]:
    from finetune.dpo import load_pairs

    return list(load_pairs(path, tokenizer, max_length))


def _objective(
    config: TrainConfig,
    backend: LoRABackend,
    train_set: list[Any],
    valid_set: list[Any],
    pad_id: int,
    fingerprint: dict[str, Any],
) -> Objective:
    """The run's objective; DPO's reference log-probs come from the model as it starts."""
    if config.method == "supervised":
        return Supervised(backend, train_set, valid_set, pad_id)
    from finetune.dpo import DPO, cached_reference, reference_logps

    def compute() -> tuple[Any, Any]:
        logger.info("DPO: reference log-probabilities of %d pairs", len(train_set) + len(valid_set))
        size = config.batch_size
        return (
            reference_logps(backend, train_set, size, pad_id),
            reference_logps(backend, valid_set, size, pad_id),
        )

    reference = cached_reference(Path(config.out_dir), fingerprint, compute)
    return DPO(backend, train_set, valid_set, pad_id, config.beta, reference)
