"""One memory estimate: admission and `pomar models info` reckon the KV cache alike."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from server.models.info import model_info, serving_memory
from server.models.memory import RUNTIME_OVERHEAD, held_weights


@pytest.mark.parametrize(("backend", "context"), [("gguf", 4096), ("mlx", 512), ("torch", 2048)])
def test_admission_and_info_agree(embedded_model_path: Path, backend: str, context: int) -> None:
    weights = held_weights(embedded_model_path, backend)
    kv = model_info(embedded_model_path, context=context).kv_cache_bytes
    assert kv is not None and kv > 0
    expected = weights + kv + math.ceil(weights * RUNTIME_OVERHEAD)
    assert serving_memory(embedded_model_path, backend, context) == expected


def test_weights_count_as_the_engine_holds_them(embedded_model_path: Path) -> None:
    gguf = held_weights(embedded_model_path, "gguf")
    bf16_on_disk = sum(p.stat().st_size for p in embedded_model_path.glob("*.safetensors"))
    # MLX on a CPU computes in float32: the bf16 file counts twice
    assert held_weights(embedded_model_path, "mlx") == bf16_on_disk * 2
    assert 0 < gguf < bf16_on_disk  # the Q4_1 file is held as it is


def test_the_fine_tune_estimate_counts_weights_as_the_trainer_holds_them(
    embedded_model_path: Path, pomar_home: Path, tmp_path: Path
) -> None:
    import json

    from server.models.loading import backend_for, training_backend
    from tests.live_server import run_pomar
    from tests.server.finetune_data import write_training_file

    data = write_training_file(tmp_path / "train.jsonl", n=12)
    done = run_pomar(
        ["data", "check", str(data), "--model", "smollm2-135m-instruct", "--json"], pomar_home
    )
    assert done.returncode == 0, done.stderr
    memory = json.loads(done.stdout)["estimate"]["memory"]
    trainer = training_backend(backend_for("auto", embedded_model_path))
    held = held_weights(embedded_model_path, trainer)
    assert memory["weights_gb"] == pytest.approx(held / 2**30, abs=1e-3)
