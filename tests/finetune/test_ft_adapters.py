"""Adapter conversion beyond the trained runs: a partial layer range, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ft_helpers import assert_same_logits, mlx_logits, peft_logits
from safetensors.numpy import save_file

from finetune.adapters import convert_mlx_to_peft, convert_peft_to_mlx, detect_adapter_format


def test_partial_layers_convert_with_the_right_layer_range(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """An adapter on the last block only keeps num_layers=1 / layers_to_transform=[1]."""
    rng = np.random.default_rng(0)
    src = tmp_path / "mlx"
    src.mkdir()
    save_file(
        {
            "model.layers.1.self_attn.q_proj.lora_a": rng.normal(size=(64, 4)).astype(np.float32),
            "model.layers.1.self_attn.q_proj.lora_b": rng.normal(size=(4, 64)).astype(np.float32),
        },
        str(src / "adapters.safetensors"),
    )
    lora = {"rank": 4, "scale": 0.5, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
    config = {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": lora}
    (src / "adapter_config.json").write_text(json.dumps(config))

    peft_dir = convert_mlx_to_peft(src, tmp_path / "peft", tiny_model_path)
    peft_config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert peft_config["layers_to_transform"] == [1] and peft_config["lora_alpha"] == 2.0
    assert_same_logits(
        peft_logits(tiny_model_path, peft_dir),
        mlx_logits(tiny_model_path, src),
        mlx_logits(tiny_model_path),
    )
    back = convert_peft_to_mlx(peft_dir, tmp_path / "back", tiny_model_path)
    assert json.loads((back / "adapter_config.json").read_text())["num_layers"] == 1


def test_unconvertible_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither"):
        detect_adapter_format(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="only LoRA"):
        convert_peft_to_mlx(tmp_path, tmp_path / "out")
