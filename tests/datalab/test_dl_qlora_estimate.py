"""QLoRA in the estimate: an explicit `--precision int4|int8` wins over the model's own
weight size, and the report says what quantizing saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dl_helpers import WriteLines, good_records

from datalab.cli import main
from datalab.estimate import EstimateConfig, ModelShape, estimate_memory, estimate_training

pytest_plugins = ["dl_fixtures"]

GB = 1024**3


def _shape(weights: int | None) -> ModelShape:
    return ModelShape(
        n_params=1_000_000_000,
        hidden_size=2048,
        n_layers=16,
        n_heads=16,
        n_kv_heads=4,
        intermediate_size=8192,
        vocab_size=32000,
        weights_bytes=weights,
    )


def test_an_explicit_precision_wins_over_the_known_weight_size() -> None:
    known = _shape(2 * 10**9)  # the model's own bf16 weights
    assert estimate_memory(known, EstimateConfig(), 512).weights_gb == round(2e9 / GB, 3)
    int4 = estimate_memory(known, EstimateConfig(precision="int4"), 512)
    assert int4.weights_gb == round(0.5e9 / GB, 3)
    assert estimate_memory(known, EstimateConfig(precision="fp32"), 512).weights_gb == round(
        4e9 / GB, 3
    )
    estimate = estimate_training(100, 10_000, EstimateConfig(precision="int4"), known)
    assert "QLoRA: int4 weights 0.47 GB instead of 1.86 GB unquantized" in estimate.message
    plain = estimate_training(100, 10_000, EstimateConfig(), known)
    assert "QLoRA" not in plain.message


def test_data_check_precision_int4_shows_the_saving(
    write_lines: WriteLines, dl_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = str(write_lines(good_records(20)))
    folder = str(dl_tokenizer_dir)

    def weights_of(path: Path) -> int:
        return 4 * 10**9  # what pomar's own reckoning says the trainer holds

    def run(*extra: str) -> dict[str, object]:
        assert main(["check", src, "--model", folder, "--json", *extra], None, weights_of) == 0
        return json.loads(capsys.readouterr().out)["estimate"]  # type: ignore[no-any-return]

    plain, int4 = run(), run("--precision", "int4")
    plain_w = plain["memory"]["weights_gb"]  # type: ignore[index]
    int4_w = int4["memory"]["weights_gb"]  # type: ignore[index]
    assert plain_w == round(4e9 / GB, 3) and int4_w < plain_w / 4
    assert "QLoRA: int4 weights" in str(int4["message"])
    assert "instead of 3.73 GB unquantized" in str(int4["message"])
