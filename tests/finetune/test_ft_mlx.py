"""The MLX backend on the real engine: learns a fixed reply, on a worker thread.

One 36-step run (module fixture) feeds the behaviour, checkpoint, result-file and
MLX → PEFT conversion tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from ft_helpers import (
    HELD_OUT_PROMPT,
    SECRET,
    Recorder,
    Run,
    assert_same_logits,
    greedy_mlx,
    mlx_logits,
    peft_logits,
    run_in_thread,
    secret_config,
    write_secret_data,
)

from finetune.adapters import convert_mlx_to_peft, convert_peft_to_mlx, detect_adapter_format
from finetune.data import TrainingDataError
from finetune.results import CSV_COLUMNS, plot_loss_curve, write_results_csv
from finetune.state import STATE_FILE
from finetune.trainer import train


@pytest.fixture(scope="module")
def secret_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_secret_data(tmp_path_factory.mktemp("secret-data"))


@pytest.fixture(scope="module")
def mlx_run(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """36 MLX steps (12 examples x 3 epochs, batch 1) on a background thread."""
    config = secret_config(tiny_model_path, secret_data, tmp_path_factory.mktemp("mlx"), "mlx")
    recorder = Recorder()
    return Run(config, run_in_thread(config, recorder), recorder)


def test_learns_the_fixed_reply_on_a_worker_thread(mlx_run: Run) -> None:
    result, recorder = mlx_run.result, mlx_run.recorder
    assert recorder.threads == {"finetune-worker"}
    assert (result.steps, result.total_steps) == (36, 36)
    assert not result.stopped_early
    assert result.adapter_path == mlx_run.config.out_dir / "adapter"
    reply = greedy_mlx(mlx_run.config.model_path, result.adapter_path, HELD_OUT_PROMPT)
    # it also learned to stop: <|im_end|> was in the trained span
    assert reply == SECRET, reply


def test_train_loss_decreases_and_metrics_are_reported(mlx_run: Run) -> None:
    steps = mlx_run.recorder.steps
    assert [m.step for m in steps] == list(range(1, 37))
    first, last = steps[:6], steps[-6:]
    assert sum(m.train_loss for m in last) < 0.3 * sum(m.train_loss for m in first)
    assert last[-1].train_mean_token_accuracy > 0.8
    lr = mlx_run.config.learning_rate
    assert all(m.total_steps == 36 and m.learning_rate == lr for m in steps)
    assert all(m.tokens_per_second > 0 for m in steps)
    tokens = [m.trained_tokens for m in steps]
    assert tokens == sorted(tokens) and tokens[-1] == mlx_run.result.trained_tokens
    evals = mlx_run.recorder.evals
    assert [e.step for e in evals] == [12, 24, 36]
    assert evals[-1].valid_loss < evals[0].valid_loss
    assert mlx_run.result.last_valid_loss == evals[-1].valid_loss
    assert mlx_run.result.last_train_loss == steps[-1].train_loss
    assert len(mlx_run.result.history) == 36
    assert mlx_run.result.history[11]["valid_loss"] == evals[0].valid_loss


def test_checkpoints_are_complete_adapters(mlx_run: Run) -> None:
    infos = mlx_run.recorder.checkpoints
    assert [c.step for c in infos] == [12, 24, 36]
    for info in infos:
        assert info.path == mlx_run.config.out_dir / "checkpoints" / f"step-{info.step}"
        files = {p.name for p in info.path.iterdir()}
        assert {"adapters.safetensors", "adapter_config.json", STATE_FILE} <= files
        assert set(info.metrics) >= {"step", "train_loss", "valid_loss"}
        assert info.metrics["step"] == info.step
    config = json.loads((infos[0].path / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["num_layers"] == 2
    assert config["lora_parameters"]["scale"] == 2.0
    # an early checkpoint loads as a model too (mlx_lm reads our adapter_config.json)
    greedy_mlx(mlx_run.config.model_path, infos[0].path, HELD_OUT_PROMPT)
    checkpoints = mlx_run.config.out_dir / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".")] == []


def test_results_csv_has_openai_columns_and_a_row_per_step(mlx_run: Run, tmp_path: Path) -> None:
    path = write_results_csv(mlx_run.result.history, tmp_path / "results" / "results.csv")
    rows = list(csv.DictReader(path.open()))
    assert (
        tuple(rows[0])
        == CSV_COLUMNS
        == (
            "step",
            "train_loss",
            "valid_loss",
            "train_mean_token_accuracy",
            "valid_mean_token_accuracy",
            "tokens_per_second",
        )
    )
    assert [int(r["step"]) for r in rows] == list(range(1, 37))
    assert rows[0]["valid_loss"] == "" and float(rows[11]["valid_loss"]) > 0
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(0 <= float(r["train_mean_token_accuracy"]) <= 1 for r in rows)
    assert [p.name for p in path.parent.iterdir()] == ["results.csv"]  # no temp file left


def test_loss_curve_png_is_written(mlx_run: Run, tmp_path: Path) -> None:
    path = plot_loss_curve(mlx_run.result.history, tmp_path / "loss.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert plot_loss_curve([], tmp_path / "empty.png").stat().st_size > 0


def test_mlx_adapter_converted_to_peft_gives_the_same_logits(
    mlx_run: Run, tiny_model_path: Path, tmp_path: Path
) -> None:
    src = mlx_run.result.adapter_path
    assert detect_adapter_format(src) == "mlx"
    dst = convert_mlx_to_peft(src, tmp_path / "peft", tiny_model_path)
    assert detect_adapter_format(dst) == "peft"
    reference = mlx_logits(tiny_model_path, src)
    assert_same_logits(peft_logits(tiny_model_path, dst), reference, mlx_logits(tiny_model_path))
    round_trip = convert_peft_to_mlx(dst, tmp_path / "back", tiny_model_path)
    np.testing.assert_allclose(mlx_logits(tiny_model_path, round_trip), reference, atol=1e-5)


def test_bad_data_fails_before_loading_weights(tiny_model_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}))
    config = secret_config(tiny_model_path, (bad, bad), tmp_path / "out", "mlx")
    with pytest.raises(TrainingDataError, match="no assistant message"):
        train(config)
    assert not (tmp_path / "out").exists()


def test_a_target_module_typo_is_refused(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    lora = {"target_modules": ["self_attn.q_proj", "self_attn.qv_proj"]}
    config = secret_config(tiny_model_path, secret_data, tmp_path, "mlx", lora=lora)
    with pytest.raises(ValueError, match="qv_proj"):
        train(config)


def test_a_quantized_base_trains_qlora(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """QLoRA: LoRA layers over mlx-lm's 4-bit QuantizedLinear (slow on x86 CPUs, not wrong)."""
    import mlx.nn as nn
    from mlx_lm import convert, load

    quantized = tmp_path / "tiny-4bit"
    convert(str(tiny_model_path), mlx_path=str(quantized), quantize=True, q_group_size=32)
    config = secret_config(
        quantized, secret_data, tmp_path / "out", "mlx", n_epochs=1, batch_size=4
    )
    result = train(config)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    model, _ = load(str(quantized), adapter_path=str(result.adapter_path))
    q_proj = model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.linear, nn.QuantizedLinear) and "lora_a" in q_proj
