"""The training process of a job: `python -m server.jobs.trainchild FD` (server.jobs.trainproc).

Reads the `TrainConfig` as one JSON line on stdin, trains, and writes its reports as JSON
lines to the file descriptor `FD`. A `stop` line on stdin, or stdin closing (the server
went away), stops training at the next step with a checkpoint, as a cancel does.

On several ranks (`python -m server.jobs.trainchild --rank mlx|torch HOST:PORT:TOKEN`,
started by a launcher: server/jobs/launch.py), rank 0 connects to the server's control
socket instead, sends the token, and speaks the same lines over it; it then sends the
config and the files a rank needs (the data, a parent adapter, the checkpoint it resumes
from) to the other ranks through the group (finetune/distributed.py), which may be on
other machines. Those ranks train into a temporary folder and report nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import socket
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from finetune.callbacks import CheckpointInfo, EvalMetrics, StepMetrics, TrainingCallback
from finetune.config import TrainConfig
from server.engine.runner.process import die_with_parent

LOST_GROUP_EXIT = 4  # the exit status of a rank whose group broke under it


class PipeCallback(TrainingCallback):
    """Writes every report to the parent; reads `stop` from `commands` (stdin)."""

    def __init__(self, out: IO[str], commands: IO[str] | None = None) -> None:
        self._out = out
        self._in = commands or sys.stdin
        self._stop = False

    def send(self, kind: str, body: Any) -> None:
        self._out.write(json.dumps({"kind": kind, "body": body}, default=str) + "\n")
        self._out.flush()

    def on_step(self, metrics: StepMetrics) -> None:
        self.send("step", dataclasses.asdict(metrics))

    def on_eval(self, metrics: EvalMetrics) -> None:
        self.send("eval", dataclasses.asdict(metrics))

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.send(
            "checkpoint", {"step": info.step, "path": str(info.path), "metrics": info.metrics}
        )

    def on_evaluation(self, phase: str, metrics: dict[str, Any]) -> None:
        self.send("evaluation", {"phase": phase, "metrics": metrics})

    def should_stop(self) -> bool:
        while not self._stop and select.select([self._in], [], [], 0)[0]:
            line = self._in.readline()
            if not line:
                # the server is gone: leave now, writing nothing, so the restarted server
                # resumes from the last checkpoint without this process writing beside it
                os._exit(3)
            self._stop = line.strip() == "stop"
        return self._stop


def main(argv: list[str]) -> int:
    """Train the config read from stdin; report to the descriptor `argv[0]`. With
    `--rank ENGINE CONTROL`, run as one rank of a data-parallel group."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["--rank"]:
        return _rank_main(argv[1], argv[2])
    die_with_parent()  # elsewhere, `should_stop` sees stdin close at the next step
    out = os.fdopen(int(argv[0]), "w", encoding="utf-8")
    callback = PipeCallback(out)
    config = TrainConfig.model_validate_json(sys.stdin.readline())
    return _run(config, callback, None)


def _run(config: TrainConfig, callback: PipeCallback, group: Any) -> int:
    from finetune.distributed import is_group_failure
    from finetune.trainer import train

    try:
        result = train(config, callback, group)
    except Exception as exc:  # reported to the job, which fails with it
        if group is not None and group.size > 1 and is_group_failure(exc):
            # a peer died: end as a crash (no error report), so the job resumes
            logging.getLogger(__name__).error("the group broke: %s", exc)
            return LOST_GROUP_EXIT
        callback.send("error", {"kind": type(exc).__name__, "message": str(exc)})
        return 1
    values = dataclasses.asdict(result)
    values["adapter_path"] = str(Path(result.adapter_path))
    callback.send("result", values)
    return 0


def _rank_main(engine: str, control: str) -> int:
    """One rank of a data-parallel run (see the module's docstring)."""
    from finetune.distributed import open_group

    group = open_group("mlx" if engine == "mlx" else "torch")
    try:
        return _rank_run(group, control)
    finally:
        close = getattr(group, "close", None)
        if close is not None:
            close()


def _rank_run(group: Any, control: str) -> int:
    from server.jobs.rankfiles import pack, unpack

    if group.rank != 0:
        with tempfile.TemporaryDirectory(prefix="pomar-rank-") as scratch:
            config = unpack(group.broadcast(None), Path(scratch))
            from finetune.trainer import train

            train(config, TrainingCallback(), group)
        return 0
    host, port, token = control.rsplit(":", 2)
    connection = socket.create_connection((host, int(port)))
    reader = connection.makefile("r", encoding="utf-8")
    writer = connection.makefile("w", encoding="utf-8")
    writer.write(token + "\n")
    writer.flush()
    config = TrainConfig.model_validate_json(reader.readline())
    group.broadcast(pack(config))
    return _run(config, PipeCallback(writer, reader), group)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
