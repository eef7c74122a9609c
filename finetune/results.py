"""Result files of a run: OpenAI's metrics CSV and a loss-curve PNG.

Both take :attr:`finetune.trainer.TrainResult.history` (one dict per step) and write
atomically (temporary file beside the target, then rename), so a reader never sees half a
file. The plot uses matplotlib's object API on an Agg canvas — no pyplot, no global figure
state — so it is safe on a worker thread.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CSV_COLUMNS = (
    "step",
    "train_loss",
    "valid_loss",
    "train_mean_token_accuracy",
    "valid_mean_token_accuracy",
    "tokens_per_second",
)
"""OpenAI's ``fine-tune-results`` columns (an empty cell where a step had no validation)."""

DPO_COLUMNS = (
    "train_reward_margin",
    "valid_reward_margin",
    "train_chosen_logratio",
    "train_rejected_logratio",
    "train_preference_accuracy",
    "valid_preference_accuracy",
)
"""A DPO run's columns after OpenAI's: the reward margin ``beta × (chosen - rejected)``,
each output's policy-to-reference log-ratio, and the share of pairs preferred right."""


EVALUATION_COLUMNS = ("valid_exact_match", "valid_normalized_match")
"""The before/after evaluation's greedy-answer shares (rows at step 0 and the last step)."""


def columns(history: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The CSV's columns: OpenAI's, then DPO's when the run was DPO, then the evaluation's
    when it ran."""
    rows = list(history)
    out: tuple[str, ...] = CSV_COLUMNS
    if any(row.get("train_reward_margin") is not None for row in rows):
        out += DPO_COLUMNS
    if any(row.get("valid_exact_match") is not None for row in rows):
        out += EVALUATION_COLUMNS
    return out


def with_evaluation(
    history: Iterable[Mapping[str, Any]], evaluation: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """The history with the job's before/after evaluation in it: a step-0 row before
    training, and the evaluation's figures on the last step's row."""
    rows = [dict(row) for row in history]
    if not evaluation:
        return rows

    def figures(phase: Mapping[str, Any]) -> dict[str, Any]:
        out = {
            "valid_loss": phase.get("valid_loss"),
            "valid_mean_token_accuracy": phase.get("valid_mean_token_accuracy"),
            "valid_exact_match": phase.get("exact_match"),
            "valid_normalized_match": phase.get("normalized_match"),
        }
        if phase.get("preference_accuracy") is not None:
            out["valid_preference_accuracy"] = phase["preference_accuracy"]
        return out

    before, after = evaluation.get("before"), evaluation.get("after")
    if after and rows:
        rows[-1].update(figures(after))
    if before:
        rows.insert(0, {"step": 0, **figures(before)})
    return rows


def _atomic_write(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def results_csv(history: Iterable[Mapping[str, Any]]) -> str:
    """The CSV text: a header and one row per step."""
    rows = list(history)
    names = columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in names])
    return buffer.getvalue()


def write_results_csv(history: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write :func:`results_csv` to ``path`` atomically; returns ``path``."""
    return _atomic_write(path, results_csv(history).encode("utf-8"))


def plot_loss_curve(
    history: Iterable[Mapping[str, Any]], path: Path, title: str = "Training loss"
) -> Path:
    """Train loss per step (and validation loss where measured) as a PNG at ``path``; a
    DPO run gets a second panel with its reward margin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(history)
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in rows if r.get("valid_loss") is not None]
    margins = [
        (r["step"], r["train_reward_margin"])
        for r in rows
        if r.get("train_reward_margin") is not None
    ]
    figure = Figure(figsize=(7, 6.5 if margins else 4), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(2, 1, 1) if margins else figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if valid:
        axes.plot(*zip(*valid, strict=True), "o-", label="valid loss", linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if train or valid:
        axes.legend()
    if margins:
        lower = figure.add_subplot(2, 1, 2, sharex=axes)
        lower.plot(*zip(*margins, strict=True), color="tab:green", label="train reward margin")
        valid_margins = [
            (r["step"], r["valid_reward_margin"])
            for r in rows
            if r.get("valid_reward_margin") is not None
        ]
        if valid_margins:
            lower.plot(*zip(*valid_margins, strict=True), "o-", color="tab:red", label="valid")
        lower.set_xlabel("step")
        lower.set_ylabel("reward margin")
        lower.grid(alpha=0.3)
        lower.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return _atomic_write(path, buffer.getvalue())
