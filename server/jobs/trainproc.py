"""A fine-tuning job trains in a child process: a native crash there never touches serving.

The child (`python -m server.jobs.trainchild`) runs `finetune.train` and reports through
a pipe, one JSON object a line: every callback (`step`, `eval`, `checkpoint`,
`evaluation`), then `result` or `error`. The parent turns those back into calls on the
job's callback, on the runner thread, and asks the child to stop (a `stop` line on its
stdin) when the callback says so; the child checks before every step, as the in-process
trainer does. A child that dies (a signal, the OOM killer, a non-zero exit) without a
`result` raises :class:`TrainerCrashed`: the job runner decides whether the job resumes
from its last checkpoint or fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.callbacks import CheckpointInfo, EvalMetrics, StepMetrics, TrainingCallback
from finetune.config import TrainConfig
from server.engine.runner.process import exit_description
from server.jobs.launch import Host, total_slots

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the parent asks the callback whether to stop


class TrainerCrashed(RuntimeError):
    """The training process ended without a result: `how` says how (e.g. "signal SIGKILL")."""

    def __init__(self, how: str) -> None:
        super().__init__(f"the training process died ({how})")
        self.how = how


class TrainerError(RuntimeError):
    """The training raised in the child: `kind` is the exception's class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def train_in_child(
    config: TrainConfig,
    callback: TrainingCallback,
    on_start: Callable[[int], None] | None = None,
    hosts: list[Host] | None = None,
) -> Any:
    """Train `config` in a child process; returns its `finetune.trainer.TrainResult`.

    `on_start(pid)` is called once the child runs. Raises :class:`TrainerError` for an
    exception in the trainer and :class:`TrainerCrashed` when the child dies. With `hosts`
    of more than one slot, the run is data-parallel over them (server/jobs/ranks.py).
    """
    if hosts and total_slots(hosts) > 1:
        from server.jobs.ranks import train_on_ranks

        return train_on_ranks(config, callback, hosts, on_start)
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", "server.jobs.trainchild", str(write_fd)],
        stdin=subprocess.PIPE,
        pass_fds=(write_fd,),
        close_fds=True,
    )
    os.close(write_fd)
    if on_start is not None:
        on_start(child.pid)
    assert child.stdin is not None
    outcome: dict[str, Any] = {}
    try:
        child.stdin.write((config.model_dump_json() + "\n").encode())
        child.stdin.flush()
        with os.fdopen(read_fd, "rb") as reports:
            relay(reports.fileno(), lambda line: _tell(child, line), callback, outcome)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        _close(child)
    return outcome_of(outcome, exit_description(child.returncode))


def outcome_of(outcome: dict[str, Any], how: str) -> Any:
    """The `TrainResult` the child reported, or the exception its end calls for (`how`
    says how a child that reported nothing ended)."""
    from finetune.trainer import TrainResult

    if "result" in outcome:
        values = outcome["result"]
        values["adapter_path"] = Path(values["adapter_path"])
        return TrainResult(**values)
    if "error" in outcome:
        raise TrainerError(outcome["error"]["kind"], outcome["error"]["message"])
    raise TrainerCrashed(how)


def relay(
    reports: int,
    tell: Callable[[bytes], object],
    callback: TrainingCallback,
    outcome: dict[str, Any],
) -> None:
    """Read the child's reports from the descriptor `reports` until it closes (the child
    exited or died); `tell(b"stop\n")` when the callback asks to stop."""
    asked_stop = False
    pending = b""
    while True:
        if not asked_stop and callback.should_stop():
            tell(b"stop\n")
            asked_stop = True
        ready, _, _ = select.select([reports], [], [], POLL_S)
        if not ready:
            continue
        chunk = os.read(reports, 1 << 16)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                _dispatch(json.loads(line), callback, outcome)


def _dispatch(report: dict[str, Any], callback: TrainingCallback, outcome: dict[str, Any]) -> None:
    kind, body = report["kind"], report["body"]
    if kind == "step":
        callback.on_step(StepMetrics(**body))
    elif kind == "eval":
        callback.on_eval(EvalMetrics(**body))
    elif kind == "checkpoint":
        callback.on_checkpoint(
            CheckpointInfo(step=body["step"], path=Path(body["path"]), metrics=body["metrics"])
        )
    elif kind == "evaluation":
        callback.on_evaluation(body["phase"], body["metrics"])
    elif kind in ("result", "error"):
        outcome[kind] = body


def _tell(child: subprocess.Popen[bytes], line: bytes) -> None:
    # a child that is gone already raises here; the relay then sees its pipe close
    with contextlib.suppress(OSError):
        assert child.stdin is not None
        child.stdin.write(line)
        child.stdin.flush()


def _close(child: subprocess.Popen[bytes]) -> None:
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
