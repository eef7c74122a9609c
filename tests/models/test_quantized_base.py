"""QLoRA's quantized base (server/models/quantized_base.py): made once, reused, refused
where the trainer cannot quantize."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.errors import InvalidRequest
from server.models.quantized_base import (
    bits_of,
    check_quantize,
    ensure_quantized_base,
    quantized_id,
    served_base_id,
)
from server.models.store import ModelCatalog


def test_ids_follow_pomar_models_convert() -> None:
    assert quantized_id("tiny", 4) == "tiny-mlx-q4"
    assert quantized_id("/some/where/tiny-llama", 8) == "tiny-llama-mlx-q8"
    assert quantized_id("org/name", 4) == "org/name-mlx-q4"


def test_made_once_then_reused_and_served_on(tiny_model_path: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    model_id = str(tiny_model_path)
    events: list[str] = []
    assert served_base_id(models, model_id, {"quantize": 4}, "mlx") == model_id  # not yet
    made = ensure_quantized_base(models, model_id, tiny_model_path, 4, events.append)
    assert made.created and made.model_id == "tiny-llama-mlx-q4" and bits_of(made.path) == 4
    config = json.loads((made.path / "config.json").read_text())
    assert config["quantization"]["group_size"] == 64  # hidden 64, intermediate 128
    assert any("Quantizing 'tiny-llama' to 4 bits" in e for e in events)
    assert str(tiny_model_path.parent) not in " ".join(events)  # no path reaches a client
    entry = ModelCatalog(models).require("tiny-llama-mlx-q4")
    assert entry.precision == "q4" and entry.origin == model_id and entry.format == "mlx"

    again = ensure_quantized_base(models, model_id, tiny_model_path, 4)
    assert not again.created and again.path == made.path
    assert served_base_id(models, model_id, {"quantize": 4}, "mlx") == "tiny-llama-mlx-q4"
    assert served_base_id(models, model_id, {}, "mlx") == model_id
    assert served_base_id(models, model_id, {"quantize": 4}, "torch") == model_id

    # another base with the same folder name gets its own id, not this one's weights
    other = tmp_path / "elsewhere" / "tiny-llama"
    shutil.copytree(tiny_model_path, other)
    second = ensure_quantized_base(models, str(other), other, 4)
    assert second.created and second.model_id.startswith("tiny-llama-mlx-q4-")

    # an already quantized base is trained (and served) as it is
    kept = ensure_quantized_base(models, "tiny-llama-mlx-q4", made.path, 8)
    assert not kept.created and kept.model_id == "tiny-llama-mlx-q4" and kept.path == made.path


def test_only_a_trainer_that_can_quantize_takes_quantize(monkeypatch: pytest.MonkeyPatch) -> None:
    check_quantize(None, "torch")
    check_quantize(4, "mlx")
    monkeypatch.setattr("server.models.loading.torch_has_cuda", lambda: False)
    with pytest.raises(InvalidRequest) as refused:
        check_quantize(4, "torch")
    assert refused.value.param == "hyperparameters.quantize"
    assert "CUDA" in refused.value.message and "MLX" in refused.value.message
    monkeypatch.setattr("server.models.loading.torch_has_cuda", lambda: True)
    monkeypatch.setattr("finetune.quantize.bitsandbytes_available", lambda: False)
    with pytest.raises(InvalidRequest, match="pip install bitsandbytes"):
        check_quantize(8, "torch")
    monkeypatch.setattr("finetune.quantize.bitsandbytes_available", lambda: True)
    check_quantize(4, "torch")
