"""Data-parallel training: the rank's view of the group, and the few collectives the loop uses.

A run on several ranks is the one-rank run with each step's batch split by rows: every
rank collates the whole global batch (so padding and the token count are those of the
one-rank run), trains on its rows ``rank::size``, and the backend sums the gradients of
``loss_sum / global_targets`` over the group before the optimizer update. The result is
the one-rank step up to floating-point summation order (docs/distributed.md states the
measured tolerance). Everything else — evaluation, DPO's reference log-probs, the greedy
before/after check — runs whole on every rank, with no collective, so the ranks stay in
step by running the same code.

The collectives are the engines' own: ``mx.distributed`` (launched by ``mlx.launch``, ring
backend) and ``torch.distributed`` (launched by ``torchrun``, gloo on CPU, nccl on CUDA).
Engines are imported only by the group that uses them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from finetune.backend import PairOutput
from finetune.data import Batch

Engine = Literal["mlx", "torch"]

#: how long a torch collective waits for a peer before failing the run (a hung rank must
#: not hang the job forever); MLX's ring backend has no timeout: there the launcher ends
#: every rank when one exits, and the server kills the group on cancel or shutdown.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("POMAR_COLLECTIVE_TIMEOUT_S", "600"))


class GroupLost(RuntimeError):
    """A collective failed: a peer died or the connection to it broke. The run cannot go
    on; it resumes from its last checkpoint when the job is started again."""


#: what the engines' collectives say when a peer is gone: MLX's ring ("[ring] connection
#: to a peer was lost"), gloo ("Connection closed by peer"), NCCL
_LOST_MARKS = ("[ring]", "peer", "gloo", "nccl", "connection")


def is_group_failure(exc: BaseException) -> bool:
    """Whether `exc` says the group broke (a peer died) rather than the run failing on its
    own (bad data, a bad config), which every rank would hit alike. MLX raises a plain
    RuntimeError from inside a compiled step, so its message is all there is to go on."""
    if isinstance(exc, GroupLost):
        return True
    return isinstance(exc, RuntimeError | OSError) and any(
        mark in str(exc).lower() for mark in _LOST_MARKS
    )


class Group(Protocol):
    """This process's place in a data-parallel group, and its host-side collectives."""

    @property
    def rank(self) -> int:
        """This process's rank, 0 to size - 1."""
        ...

    @property
    def size(self) -> int:
        """How many ranks the group has."""
        ...

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``values`` over every rank (same shape on all)."""
        ...

    def broadcast(self, data: bytes | None) -> bytes:
        """Rank 0's ``data``, on every rank (the others pass None)."""
        ...


@dataclass(frozen=True)
class Solo:
    """The one-rank group: every collective is the identity."""

    rank: int = 0
    size: int = 1

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)

    def broadcast(self, data: bytes | None) -> bytes:
        assert data is not None
        return data


class MLXGroup:
    """``mx.distributed``'s world group (``mlx.launch`` sets up the ring)."""

    def __init__(self) -> None:
        import mlx.core as mx

        self._mx = mx
        self.group = mx.distributed.init(strict=True)
        self.rank, self.size = self.group.rank(), self.group.size()

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        mx = self._mx
        total = mx.distributed.all_sum(mx.array(np.asarray(values)), group=self.group)
        mx.eval(total)
        return np.array(total)

    def broadcast(self, data: bytes | None) -> bytes:
        # a sum where every other rank adds zeros: MLX has no broadcast collective
        mine = len(data) if data is not None and self.rank == 0 else 0
        length = self.all_sum(np.array([mine], dtype=np.int64))
        buffer = np.zeros(int(length[0]), dtype=np.uint8)
        if self.rank == 0:
            assert data is not None
            buffer[:] = np.frombuffer(data, dtype=np.uint8)
        return self.all_sum(buffer).astype(np.uint8).tobytes()


class TorchGroup:
    """``torch.distributed``'s default group, from torchrun's environment."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch, self._dist = torch, dist
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(
                backend, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
            )
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        tensor = self._torch.from_numpy(np.array(values, copy=True))
        try:
            self._dist.all_reduce(tensor)
        except (RuntimeError, OSError) as exc:  # torch's DistError subclasses RuntimeError
            raise GroupLost(f"a collective failed: {exc}") from exc
        return tensor.numpy()

    def broadcast(self, data: bytes | None) -> bytes:
        box: list[Any] = [data]
        try:
            self._dist.broadcast_object_list(box, src=0)
        except (RuntimeError, OSError) as exc:
            raise GroupLost(f"a collective failed: {exc}") from exc
        return bytes(box[0])

    def close(self) -> None:
        """Leave the group (torch warns at exit otherwise)."""
        self._dist.destroy_process_group()


def open_group(engine: Engine | None) -> Group:
    """The group of a process started by a launcher (``engine`` names which); ``Solo`` for
    None."""
    if engine is None:
        return Solo()
    return MLXGroup() if engine == "mlx" else TorchGroup()


def rank_rows(batch: Batch, group: Group) -> Batch:
    """This rank's rows of a global batch (``rank::size``).

    A rank left without rows (a last batch smaller than the group) gets the first row with
    its mask zeroed: it takes part in the collectives and adds nothing to them.
    """
    if group.size == 1:
        return batch
    rows = np.arange(group.rank, batch.ids.shape[0], group.size)
    if rows.size == 0:
        return Batch(batch.ids[:1], np.zeros_like(batch.targets_mask[:1]), 0)
    return Batch(batch.ids[rows], batch.targets_mask[rows], batch.n_tokens)


def rank_pairs(
    batch: Batch, reference: np.ndarray, group: Group
) -> tuple[Batch, np.ndarray, np.ndarray]:
    """This rank's pairs of a global pair batch (rows ``[chosen..., rejected...]``), kept as
    ``[chosen..., rejected...]``; their reference log-probs; and their indices among the
    batch's pairs.

    A rank left without pairs gets the first pair with its masks zeroed (and no indices).
    """
    n = batch.ids.shape[0] // 2
    if group.size == 1:
        return batch, reference, np.arange(n)
    pairs = np.arange(group.rank, n, group.size)
    if pairs.size == 0:
        rows = np.array([0, n])
        empty = Batch(batch.ids[rows], np.zeros_like(batch.targets_mask[rows]), 0)
        return empty, np.zeros(2), pairs
    rows = np.concatenate([pairs, pairs + n])
    return Batch(batch.ids[rows], batch.targets_mask[rows], batch.n_tokens), reference[rows], pairs


def gathered_pairs(
    local: PairOutput, loss_share: float, pairs: np.ndarray, n: int, group: Group, n_targets: int
) -> PairOutput:
    """The whole batch's DPO figures from each rank's: ``loss_share`` is this rank's part
    of the batch's mean loss, ``pairs`` the batch indices of its pairs."""
    values = np.zeros(2 * n + 2)
    if pairs.size:  # a rank without pairs adds nothing
        values[pairs] = local.chosen
        values[n + pairs] = local.rejected
        values[2 * n] = loss_share
        values[2 * n + 1] = local.n_correct
    total = group.all_sum(values)
    return PairOutput(
        loss=float(total[2 * n]),
        chosen=total[:n],
        rejected=total[n : 2 * n],
        n_targets=n_targets,
        n_correct=round(float(total[2 * n + 1])),
    )
