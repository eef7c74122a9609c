"""Ids of fine-tuned models: `ft:<base>:pomar:<suffix>:<short id>` (+ `:ckpt-step-N`)."""

from __future__ import annotations

from pathlib import Path

OWNER = "pomar"


def fine_tuned_model_id(base_model: str, suffix: str | None, job_id: str) -> str:
    """The model id a job's result is served under (empty suffix segment allowed)."""
    base = Path(base_model).name if "/" in base_model else base_model
    return f"ft:{base}:{OWNER}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def checkpoint_model_id(fine_tuned_model: str, step: int) -> str:
    """The model id of a job's checkpoint at `step`, as OpenAI names them."""
    return f"{fine_tuned_model}:ckpt-step-{step}"
