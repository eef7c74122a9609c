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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in history:
        writer.writerow([_cell(row.get(column)) for column in CSV_COLUMNS])
    return buffer.getvalue()


def write_results_csv(history: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write :func:`results_csv` to ``path`` atomically; returns ``path``."""
    return _atomic_write(path, results_csv(history).encode("utf-8"))


def plot_loss_curve(
    history: Iterable[Mapping[str, Any]], path: Path, title: str = "Training loss"
) -> Path:
    """Train loss per step (and validation loss where measured) as a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(history)
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in rows if r.get("valid_loss") is not None]
    figure = Figure(figsize=(7, 4), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
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
    figure.tight_layout()
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return _atomic_write(path, buffer.getvalue())
