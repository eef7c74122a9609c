"""QLoRA's base: a float model quantized in memory before its LoRA layers are added.

MLX: mlx's affine quantization (the one `mlx_lm.convert -q` writes), in groups of 64
weights, or of 32 where a layer's input width is no multiple of 64; a layer whose width is
no multiple of 32 stays in float. A base that is already quantized is kept as it is.

torch: bitsandbytes (CUDA only) loads the base in 4-bit NF4 (bf16 compute, double
quantization) or 8-bit, and PEFT's `prepare_model_for_kbit_training` readies it;
`torch_quantization_config` says clearly why it cannot where it cannot.

mlx, torch and bitsandbytes are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

logger = logging.getLogger(__name__)

GROUP_SIZES = (64, 32)
"""MLX group sizes, preferred first: 64 is mlx-lm's default."""


def is_quantized_mlx(model: Any) -> bool:
    """Whether an MLX model holds quantized layers (a base converted with ``-q``)."""
    import mlx.nn as nn

    return any(
        isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        for _, module in model.named_modules()
    )


def mlx_group_size(model: Any) -> int:
    """64 when every quantizable layer's input width allows it, else 32."""
    widths = [
        int(module.weight.shape[-1])
        for _, module in model.named_modules()
        if hasattr(module, "to_quantized") and hasattr(module, "weight")
    ]
    return 64 if all(w % 64 == 0 for w in widths) else 32


def quantize_mlx_model(model: Any, bits: int) -> bool:
    """Quantize a float MLX model in place to `bits` (4 or 8); False if it was already.

    The model's own ``quant_predicate`` (layers a family keeps in float) is honoured, as
    mlx-lm's converter does.
    """
    import mlx.core as mx
    from mlx_lm.utils import quantize_model

    if is_quantized_mlx(model):
        logger.info("the base is already quantized: QLoRA trains on it as it is")
        return False
    group_size = mlx_group_size(model)
    quantize_model(model, {}, group_size, bits)
    mx.eval(model.parameters())
    logger.info("base quantized to %d bits (groups of %d) for QLoRA", bits, group_size)
    return True


# --------------------------------------------------------------------------- torch


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes is installed (found without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def torch_quantize_problem(cuda: bool) -> str | None:
    """Why the torch trainer cannot train QLoRA here, or None when it can.

    `cuda`: whether the trainer runs on a CUDA device (bitsandbytes' k-bit layers train
    only there).
    """
    if not cuda:
        return (
            "QLoRA (hyperparameters.quantize) on the torch trainer needs a CUDA GPU and "
            "bitsandbytes; this machine trains with torch without CUDA. Train on an MLX "
            "base instead (MLX quantizes it, on Apple silicon or, slowly, on the CPU), or "
            "leave quantize out."
        )
    if not bitsandbytes_available():
        return (
            "QLoRA (hyperparameters.quantize) on the torch trainer needs bitsandbytes, which "
            "is not installed: pip install bitsandbytes (or train on an MLX base, or leave "
            "quantize out)."
        )
    return None


def torch_quantization_config(bits: int, cuda: bool) -> Any:
    """transformers' `BitsAndBytesConfig` for `bits`: 4-bit NF4 (bf16 compute, double
    quantization) or 8-bit (LLM.int8).

    Raises:
        ValueError: no CUDA, or no bitsandbytes (the message says what to do).
    """
    problem = torch_quantize_problem(cuda)
    if problem is not None:
        raise ValueError(problem)
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantize must be 4 or 8 bits, not {bits}")
