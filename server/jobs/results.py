"""A finished job's result files: metrics CSV and loss curve, stored as Files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from finetune.results import plot_loss_curve, results_csv, with_evaluation
from server.store import Store

RESULTS_PURPOSE = "fine-tune-results"


def store_results(
    store: Store,
    job_id: str,
    history: list[dict[str, Any]],
    evaluation: dict[str, Any] | None = None,
) -> list[str]:
    """Store `step_metrics.csv` (with the before/after evaluation: a step-0 row and the
    last row) and `loss_curve.png`; return their file ids."""
    history = with_evaluation(history, evaluation)
    csv = store.files.put_bytes(
        results_csv(history).encode(),
        filename=f"{job_id}-step_metrics.csv",
        purpose=RESULTS_PURPOSE,
    )
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_loss_curve(history, Path(tmp) / "loss.png")
        image = store.files.put_bytes(
            png.read_bytes(), filename=f"{job_id}-loss_curve.png", purpose=RESULTS_PURPOSE
        )
    return [csv.id, image.id]
