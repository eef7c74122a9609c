"""A rich progress bar for running :func:`finetune.trainer.train` in the foreground.

``pomar tune`` (and anyone else) passes :class:`RichProgress` as the callback, or combines
it with others through :class:`finetune.callbacks.CallbackList`.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from finetune.callbacks import CheckpointInfo, EvalMetrics, StepMetrics, TrainingCallback


class RichProgress(TrainingCallback):
    """Shows step, losses and tokens/s; :meth:`stop` (e.g. from a SIGINT handler) makes the
    trainer stop before its next step. Use as a context manager around ``train(...)``.
    """

    def __init__(self, console: Any = None, description: str = "training") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self._task = self._progress.add_task(description, total=None, status="loading…")
        self._stop = threading.Event()
        self._valid: str = ""
        self.checkpoints: list[CheckpointInfo] = []

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def stop(self) -> None:
        """Ask the trainer to stop before its next step."""
        self._stop.set()

    def on_step(self, metrics: StepMetrics) -> None:
        status = (
            f"loss {metrics.train_loss:.3f}{self._valid} · {metrics.tokens_per_second:.0f} tok/s"
        )
        self._progress.update(
            self._task, completed=metrics.step, total=metrics.total_steps, status=status
        )

    def on_eval(self, metrics: EvalMetrics) -> None:
        self._valid = f" · valid {metrics.valid_loss:.3f}"

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)
        self._progress.console.log(f"checkpoint step {info.step}: {info.path}")

    def should_stop(self) -> bool:
        return self._stop.is_set()
