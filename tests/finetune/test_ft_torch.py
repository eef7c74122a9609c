"""The torch backend (PEFT) on the real engine: same contract, PEFT-loadable adapters.

One 48-step run (module fixture) feeds the behaviour, folder and PEFT → MLX conversion tests.
"""

from __future__ import annotations

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
    greedy_peft,
    mlx_logits,
    peft_logits,
    secret_config,
    write_secret_data,
)
from safetensors.numpy import load_file, save_file

from finetune.adapters import convert_peft_to_mlx, detect_adapter_format
from finetune.trainer import train


@pytest.fixture(scope="module")
def torch_run(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """48 PEFT steps (PEFT's LoRA init needs a 4th epoch on this model to be word-perfect)."""
    data = write_secret_data(tmp_path_factory.mktemp("secret-data"))
    out = tmp_path_factory.mktemp("torch")
    config = secret_config(tiny_model_path, data, out, "torch", n_epochs=4)
    recorder = Recorder()
    return Run(config, train(config, recorder), recorder)


def test_learns_the_fixed_reply_through_peft(torch_run: Run) -> None:
    result = torch_run.result
    assert (result.steps, result.total_steps, result.stopped_early) == (48, 48, False)
    losses = [m.train_loss for m in torch_run.recorder.steps]
    assert sum(losses[-6:]) < 0.3 * sum(losses[:6])
    assert [e.step for e in torch_run.recorder.evals] == [12, 24, 36, 48]
    assert torch_run.recorder.evals[-1].valid_loss < torch_run.recorder.evals[0].valid_loss
    reply = greedy_peft(torch_run.config.model_path, result.adapter_path, HELD_OUT_PROMPT)
    assert reply == SECRET, reply  # and stops: <|im_end|> is trained


def test_adapter_and_checkpoints_are_peft_folders(torch_run: Run) -> None:
    folders = [torch_run.result.adapter_path, *(c.path for c in torch_run.recorder.checkpoints)]
    assert [c.step for c in torch_run.recorder.checkpoints] == [12, 24, 36, 48]
    for folder in folders:
        assert (folder / "adapter_model.safetensors").is_file()
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
        assert sorted(config["target_modules"]) == [
            "self_attn.k_proj",
            "self_attn.o_proj",
            "self_attn.q_proj",
            "self_attn.v_proj",
        ]
        assert config["base_model_name_or_path"] == str(torch_run.config.model_path)


def test_peft_adapter_converted_to_mlx_gives_the_same_logits(
    torch_run: Run, tiny_model_path: Path, tmp_path: Path
) -> None:
    src = torch_run.result.adapter_path
    assert detect_adapter_format(src) == "peft"
    dst = convert_peft_to_mlx(src, tmp_path / "mlx")  # base found from the PEFT config
    assert detect_adapter_format(dst) == "mlx"
    config = json.loads((dst / "adapter_config.json").read_text())
    assert config["num_layers"] == 2 and config["lora_parameters"]["scale"] == 2.0
    reference = peft_logits(tiny_model_path, src)
    base = peft_logits(tiny_model_path, _zero_adapter(src, tmp_path / "zero"))
    np.testing.assert_allclose(base, mlx_logits(tiny_model_path), atol=1e-4)
    assert_same_logits(mlx_logits(tiny_model_path, dst), reference, base)


def _zero_adapter(src: Path, dst: Path) -> Path:
    """A copy of a PEFT adapter with B = 0: the base model's logits through PEFT."""
    dst.mkdir()
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file(
        {k: (np.zeros_like(v) if "lora_B" in k else v) for k, v in weights.items()},
        str(dst / "adapter_model.safetensors"),
    )
    (dst / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    return dst
