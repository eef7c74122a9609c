"""What a training run optimises: one step on some examples, and a validation pass.

The loop in :mod:`finetune.trainer` (schedule, checkpoints, cancel, resume, metrics) is the
same for every method; an objective knows its data and how the backend takes a step on it.
:class:`Supervised` is next-token cross-entropy on chat examples; DPO lives in
:mod:`finetune.dpo`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from finetune.backend import LoRABackend
from finetune.data import Example, collate


@dataclass(frozen=True)
class Measured:
    """A step's (or a validation pass's) figures.

    ``loss`` is the objective's own loss; ``accuracy`` the share of trained tokens the
    model predicts exactly (greedy); ``extras`` the method's own figures, named without the
    ``train_``/``valid_`` prefix the loop adds.
    """

    loss: float
    accuracy: float
    n_tokens: int = 0  # real tokens of the batch (prompt included, padding excluded)
    extras: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """A method's data and step; ``size`` items (examples or pairs) make an epoch."""

    size: int

    def step(self, indices: list[int]) -> Measured:
        """One optimizer update on the items at ``indices`` of the training set."""
        ...

    def evaluate(
        self, batch_size: int, cap: int | None, should_stop: Callable[[], bool]
    ) -> Measured | None:
        """The whole validation set (at most ``cap`` batches); None when stopped midway."""
        ...

    @property
    def has_validation(self) -> bool:
        """Whether there is a validation set to evaluate on."""
        ...


class Supervised:
    """Cross-entropy on the assistant tokens of chat examples."""

    def __init__(
        self, backend: LoRABackend, train: list[Example], valid: list[Example], pad_id: int
    ) -> None:
        self.backend, self.train, self.valid, self.pad_id = backend, train, valid, pad_id
        self.size = len(train)

    @property
    def has_validation(self) -> bool:
        return bool(self.valid)

    def step(self, indices: list[int]) -> Measured:
        batch = collate([self.train[i] for i in indices], self.pad_id)
        out = self.backend.train_step(batch)
        return Measured(out.loss, _share(out.n_correct, out.n_targets), batch.n_tokens)

    def evaluate(
        self, batch_size: int, cap: int | None, should_stop: Callable[[], bool]
    ) -> Measured | None:
        loss_sum, targets, correct = 0.0, 0, 0
        for number, start in enumerate(range(0, len(self.valid), batch_size)):
            if cap is not None and number >= cap:
                break
            if should_stop():
                return None
            batch = collate(self.valid[start : start + batch_size], self.pad_id)
            out = self.backend.eval_step(batch)
            loss_sum += out.loss * out.n_targets
            targets += out.n_targets
            correct += out.n_correct
        return Measured(loss_sum / max(targets, 1), _share(correct, targets))


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
