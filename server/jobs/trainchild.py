"""The training process of a job: `python -m server.jobs.trainchild FD` (server.jobs.trainproc).

Reads the `TrainConfig` as one JSON line on stdin, trains, and writes its reports as JSON
lines to the file descriptor `FD`. A `stop` line on stdin, or stdin closing (the server
went away), stops training at the next step with a checkpoint, as a cancel does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import sys
from pathlib import Path
from typing import IO, Any

from finetune.callbacks import CheckpointInfo, EvalMetrics, StepMetrics, TrainingCallback
from finetune.config import TrainConfig
from server.engine.runner.process import die_with_parent


class PipeCallback(TrainingCallback):
    """Writes every report to the parent; reads `stop` from stdin."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
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
        while not self._stop and select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline()
            if not line:
                # the server is gone: leave now, writing nothing, so the restarted server
                # resumes from the last checkpoint without this process writing beside it
                os._exit(3)
            self._stop = line.strip() == "stop"
        return self._stop


def main(argv: list[str]) -> int:
    """Train the config read from stdin; report to the descriptor `argv[0]`."""
    die_with_parent()  # elsewhere, `should_stop` sees stdin close at the next step
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from finetune.trainer import train

    out = os.fdopen(int(argv[0]), "w", encoding="utf-8")
    callback = PipeCallback(out)
    config = TrainConfig.model_validate_json(sys.stdin.readline())
    try:
        result = train(config, callback)
    except Exception as exc:  # reported to the job, which fails with it
        callback.send("error", {"kind": type(exc).__name__, "message": str(exc)})
        return 1
    values = dataclasses.asdict(result)
    values["adapter_path"] = str(Path(result.adapter_path))
    callback.send("result", values)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
