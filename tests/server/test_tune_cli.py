"""`pomar tune`: the job pipeline in the foreground, as a user runs it in a terminal."""

from __future__ import annotations

import subprocess
from pathlib import Path

from finetune_data import write_training_file
from live_server import run_pomar


def tune(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return run_pomar(["tune", *args], home, timeout=600)


def test_tune_trains_an_adapter(tiny_model_path: Path, tmp_path: Path) -> None:
    data = write_training_file(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    done = tune(
        [
            str(data),
            "--model",
            str(tiny_model_path),
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--lr-multiplier",
            "100",
            "--backend",
            "mlx",
            "--out",
            str(out),
        ],
        tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "train" / "adapter" / "adapter_config.json").is_file()
    assert (out / "data" / "report.json").is_file()
    assert (out / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "step,train_loss" in (out / "step_metrics.csv").read_text().splitlines()[0].replace(
        " ", ""
    )
    assert f"adapter:    {out / 'train' / 'adapter'}" in done.stderr
    # the before/after evaluation on the split-off validation set
    assert "evaluation on the validation set" in done.stderr
    assert "validation loss" in done.stderr and "exact match" in done.stderr


def test_tune_refuses_a_file_that_cannot_train(tiny_model_path: Path, tmp_path: Path) -> None:
    data = write_training_file(tmp_path / "few.jsonl", n=3)
    done = tune(
        [str(data), "--model", str(tiny_model_path), "--out", str(tmp_path / "o")], tmp_path / "h"
    )
    assert done.returncode == 1
    assert "10" in done.stderr and "example" in done.stderr
    assert not (tmp_path / "o" / "train").exists()
