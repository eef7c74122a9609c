"""A run's checkpoint state: what a checkpoint must carry for a resume to continue the same
run, where checkpoints live, and the fingerprint that says a checkpoint is this run's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import TrainConfig

STATE_FILE = "trainer_state.json"
STATE_FORMAT = 1


@dataclass
class Progress:
    """Everything a checkpoint must carry for a resume to continue the same run."""

    step: int = 0
    trained_tokens: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluation_before: dict[str, Any] | None = None  # the run's "before" evaluation

    def latest(self, key: str) -> float | None:
        return next((row[key] for row in reversed(self.history) if row.get(key) is not None), None)


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(out_dir) / "checkpoints" / f"step-{step}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``out_dir``, if any."""
    root = Path(out_dir) / "checkpoints"
    found = [
        (int(path.name.removeprefix("step-")), path)
        for path in root.glob("step-*")
        if path.name.removeprefix("step-").isdigit() and (path / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def fingerprint(config: TrainConfig, n_examples: int) -> dict[str, Any]:
    """What must match for a checkpoint's step to mean the same point of the same run."""
    fingerprint: dict[str, Any] = {
        "backend": config.backend,
        "n_examples": n_examples,
        "n_epochs": config.n_epochs,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "lora": config.lora.model_dump(mode="json", exclude={"max_length"}),
    }
    # only when set, so checkpoints of supervised runs made before these existed still match
    if config.method != "supervised":
        fingerprint.update(method=config.method, beta=config.beta)
    if config.init_adapter is not None:
        fingerprint["init_adapter"] = str(config.init_adapter)
    if config.quantize is not None:
        fingerprint["quantize"] = config.quantize
    return fingerprint


def read_state(checkpoint: Path, fingerprint: dict[str, Any], total: int) -> Progress:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{checkpoint} is not a training checkpoint (no {STATE_FILE})")
    state = json.loads(path.read_text(encoding="utf-8"))
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{checkpoint}: unsupported checkpoint format {state.get('format')}")
    if state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{checkpoint} belongs to a different run: {state.get('fingerprint')} != {fingerprint}"
        )
    step = int(state["step"])
    if not 0 <= step <= total:
        raise ValueError(f"{checkpoint}: step {step} is outside this run's {total} steps")
    return Progress(
        step=step,
        trained_tokens=int(state["trained_tokens"]),
        elapsed_s=float(state["elapsed_s"]),
        history=list(state["history"]),
        evaluation_before=state.get("evaluation_before"),
    )
