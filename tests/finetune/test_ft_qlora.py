"""QLoRA: `TrainConfig.quantize` quantizes a float base before LoRA, and it pays.

The memory test measures MLX's own allocator (`mx.get_peak_memory`, which the CPU build
keeps too) over one training step of a float LoRA run and of a QLoRA run on the same model:
a wider tiny Llama (hidden 512, 4 layers, ~13M parameters, fp32 on the CPU) at batch 1, so
that the weights, not the activations, dominate a step's memory as in real fine-tunes.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from ft_helpers import secret_config, write_secret_data
from tiny_model import _random_weights, build_tiny_model

from finetune.config import TrainConfig
from finetune.data import Batch
from finetune.trainer import train

WIDE = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "initializer_range": 0.02,
}


@pytest.fixture(scope="module")
def secret_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_secret_data(tmp_path_factory.mktemp("secret-data"))


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's tokenizer and template on wider, deeper random fp32 weights."""
    from safetensors.numpy import save_file

    root = build_tiny_model(tmp_path_factory.mktemp("wide") / "wide-llama")
    config = {**json.loads((root / "config.json").read_text()), **WIDE}
    (root / "config.json").write_text(json.dumps(config))
    save_file(_random_weights(config, 0), str(root / "model.safetensors"))
    return root


def _step_peak(config: TrainConfig, batch: Batch) -> tuple[float, float, float]:
    """(peak bytes of a training step, resident weights+state bytes, seconds per step)."""
    import mlx.core as mx

    from finetune.mlx_lora import MLXLoRABackend

    backend = MLXLoRABackend(config)
    backend.train_step(batch)  # the first step allocates Adam's state
    mx.reset_peak_memory()
    started = time.perf_counter()
    backend.train_step(batch)
    backend.train_step(batch)
    seconds = (time.perf_counter() - started) / 2
    peak, active = mx.get_peak_memory(), mx.get_active_memory()
    del backend
    gc.collect()
    mx.clear_cache()
    return float(peak), float(active), seconds


def test_a_qlora_step_peaks_far_below_a_float_step(
    wide_model: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    vocab = json.loads((wide_model / "config.json").read_text())["vocab_size"]
    ids = np.random.default_rng(0).integers(0, vocab, (1, 48)).astype(np.int32)
    batch = Batch(ids, np.ones((1, 47), np.float32), 48)
    measured = {}
    for bits in (None, 4, 8):
        config = secret_config(wide_model, secret_data, tmp_path / f"q{bits}", "mlx", quantize=bits)
        measured[bits] = _step_peak(config, batch)
    MB = 2**20
    for bits, (peak, active, seconds) in measured.items():
        print(
            f"{'float32' if bits is None else f'{bits}-bit'}: step peak {peak / MB:.1f} MiB, "
            f"resident {active / MB:.1f} MiB, {seconds:.2f} s/step"
        )
    (float_peak, _, _), (q4_peak, _, _), (q8_peak, _, _) = (measured[b] for b in (None, 4, 8))
    q4_ratio, q8_ratio = q4_peak / float_peak, q8_peak / float_peak
    print(f"QLoRA step peak / float step peak: 4-bit {q4_ratio:.2f}, 8-bit {q8_ratio:.2f}")
    # fp32 weights are 52 MiB here; 4-bit (5 bits a weight with scales) about 9
    assert q4_peak < 0.5 * float_peak
    assert q4_peak < q8_peak < 0.6 * float_peak


def test_quantize_4_on_a_float_base_gives_quantized_layers_that_learn(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    import mlx.nn as nn

    from finetune.mlx_lora import MLXLoRABackend

    config = secret_config(
        tiny_model_path, secret_data, tmp_path / "out", "mlx", quantize=4, n_epochs=2, batch_size=4
    )
    backend = MLXLoRABackend(config)
    q_proj = backend.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.linear, nn.QuantizedLinear) and "lora_a" in q_proj
    assert q_proj.linear.bits == 4 and q_proj.linear.group_size == 64
    assert isinstance(backend.model.layers[0].mlp.down_proj, nn.QuantizedLinear)
    del backend
    result = train(config)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]


def test_an_already_quantized_base_is_kept(
    tiny_model_path: Path,
    secret_data: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mlx.nn as nn
    from mlx_lm import convert

    from finetune.mlx_lora import MLXLoRABackend

    quantized = tmp_path / "tiny-8bit"
    convert(str(tiny_model_path), mlx_path=str(quantized), quantize=True, q_bits=8)
    config = secret_config(quantized, secret_data, tmp_path / "out", "mlx", quantize=4)
    with caplog.at_level(logging.INFO, logger="finetune.quantize"):
        backend = MLXLoRABackend(config)
    assert backend.model.layers[0].self_attn.q_proj.linear.bits == 8  # not re-quantized
    assert isinstance(backend.model.layers[0].mlp.up_proj, nn.QuantizedLinear)
    assert "already quantized" in caplog.text


def test_torch_qlora_without_cuda_says_what_to_do(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    from finetune.quantize import torch_quantize_problem
    from finetune.torch_lora import TorchLoRABackend

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bitsandbytes decides")
    config = secret_config(tiny_model_path, secret_data, tmp_path / "out", "torch", quantize=4)
    with pytest.raises(ValueError, match="CUDA") as refused:
        TorchLoRABackend(config)
    assert "MLX" in str(refused.value)
    problem = torch_quantize_problem(cuda=True)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        assert problem is not None and "pip install bitsandbytes" in problem
    else:
        assert problem is None
