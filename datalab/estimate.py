"""Rough training time and memory for a LoRA fine-tune, before spending either.

Time = tokens per epoch x epochs / throughput. The throughput is the caller's measured one
when given; otherwise a documented default for the backend, measured for SmolLM2-135M on
the project's 2-core x86 machines (docs/platform.md) and scaled inversely with parameter count.

Memory = weights (parameters x bytes per weight) + LoRA weights, gradients and Adam state
(fp32, 16 bytes per trainable parameter) + activations (Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models": s·b·h·(34 + 5·a·s/h) bytes
per layer at 16 bits) + logits + a fixed runtime overhead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatfmt.hyper import auto_epochs

Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]
Backend = Literal["torch-cpu", "mlx-cpu", "mlx-metal", "torch-mps", "torch-cuda"]

BYTES_PER_WEIGHT: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}
#: precisions of a quantized base (QLoRA: ``hyperparameters.quantize``)
QUANTIZED = ("int8", "int4")

REFERENCE_PARAMS = 135_000_000
# Training tokens/s for a 135M-parameter model. The CPU figures are measured (docs/platform.md:
# PEFT LoRA 0.7 it/s and MLX+OpenBLAS 0.6 it/s at batch 4 of ~40 tokens); the accelerator
# figures are conservative guesses, to be replaced by a measured throughput when known.
DEFAULT_THROUGHPUT: dict[str, float] = {
    "torch-cpu": 110.0,
    "mlx-cpu": 95.0,
    "mlx-metal": 2500.0,
    "torch-mps": 1500.0,
    "torch-cuda": 10000.0,
}
RUNTIME_OVERHEAD_GB = 0.5
_GB = 1024**3


class EstimateConfig(BaseModel):
    """Hyperparameters and machine facts the estimate depends on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_epochs: int | Literal["auto"] = Field("auto", description="epochs, or OpenAI's auto rule")
    batch_size: int = Field(4, ge=1)
    lora_rank: int = Field(8, ge=1)
    lora_layers: int | None = Field(None, ge=1, description="adapted layers (None: all)")
    lora_targets: tuple[str, ...] = Field(("q_proj", "v_proj"), description="adapted matrices")
    precision: Precision = "bf16"
    backend: Backend = "torch-cpu"
    throughput_tokens_per_s: float | None = Field(
        None, gt=0, description="measured training throughput; overrides the default table"
    )
    memory_budget_gb: float = Field(16.0, gt=0, description="machine memory")
    usable_fraction: float = Field(0.7, gt=0, le=1, description="share usable for training")
    gradient_checkpointing: bool = False


class ModelShape(BaseModel):
    """The shape of a decoder-only transformer, enough to size its training."""

    model_config = ConfigDict(frozen=True)

    n_params: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    context_length: int | None = None
    #: bytes the trainer holds the weights in, where the caller knows (pomar passes the
    #: reckoning its admission and `pomar models info` use); None, or a precision given
    #: explicitly (QLoRA's int4/int8): parameters x precision
    weights_bytes: int | None = Field(None, gt=0)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """Read a Hugging Face ``config.json`` (Llama-style names, GPT-2 names as fallback)."""
        h = int(cfg.get("hidden_size") or cfg["n_embd"])
        layers = int(cfg.get("num_hidden_layers") or cfg["n_layer"])
        heads = int(cfg.get("num_attention_heads") or cfg["n_head"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * h)
        vocab = int(cfg["vocab_size"])
        kv_dim = kv * (h // heads)
        gated = "intermediate_size" in cfg  # Llama/Qwen/Mistral MLPs have 3 matrices
        per_layer = 2 * h * h + 2 * h * kv_dim + (3 if gated else 2) * h * inter + 2 * h
        tied = bool(cfg.get("tie_word_embeddings", True))
        n = vocab * h * (1 if tied else 2) + layers * per_layer + h
        ctx = cfg.get("max_position_embeddings") or cfg.get("n_positions")
        return cls(
            n_params=n,
            hidden_size=h,
            n_layers=layers,
            n_heads=heads,
            n_kv_heads=kv,
            intermediate_size=inter,
            vocab_size=vocab,
            context_length=int(ctx) if ctx else None,
        )

    def module_shape(self, name: str) -> tuple[int, int]:
        """(in, out) features of an adapted matrix, by its usual Llama name."""
        h, kv_dim = self.hidden_size, self.n_kv_heads * (self.hidden_size // self.n_heads)
        shapes = {
            "q_proj": (h, h),
            "k_proj": (h, kv_dim),
            "v_proj": (h, kv_dim),
            "o_proj": (h, h),
            "gate_proj": (h, self.intermediate_size),
            "up_proj": (h, self.intermediate_size),
            "down_proj": (self.intermediate_size, h),
        }
        return shapes.get(name, (h, h))


def load_model_shape(folder: Path) -> ModelShape | None:
    """The spec of a local model folder, or None when it has no readable ``config.json``."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return ModelShape.from_hf_config(cfg)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_epochs(n_examples: int, n_epochs: int | Literal["auto"]) -> int:
    """OpenAI's ``auto``: 3, moved so examples x epochs lands in [100, 25,000] (1..25)."""
    if n_epochs != "auto":
        return n_epochs
    # the trainer's own rule; an estimate of no data estimates no steps whatever the epochs
    return auto_epochs(max(1, n_examples))


class MemoryEstimate(BaseModel):
    """Peak training memory, by part, in GiB."""

    weights_gb: float
    lora_gb: float
    activations_gb: float
    overhead_gb: float
    total_gb: float
    budget_gb: float
    usable_gb: float
    fits: bool


class Estimate(BaseModel):
    """How long a fine-tune would take and whether it fits in memory."""

    n_examples: int
    epochs: int
    tokens_per_epoch: int
    tokens_estimated: bool = Field(description="True when tokens come from characters / 4")
    sequences_per_example: int = Field(
        1, description="sequences one example trains on: 2 for a DPO pair (chosen and rejected)"
    )
    total_tokens: int
    throughput_tokens_per_s: float
    throughput_source: str
    seconds: float
    lora_params: int | None = None
    memory: MemoryEstimate | None = None
    message: str


def lora_param_count(spec: ModelShape, cfg: EstimateConfig) -> int:
    """Trainable LoRA parameters: rank x (in + out) per adapted matrix and layer."""
    layers = min(cfg.lora_layers or spec.n_layers, spec.n_layers)
    per_layer = sum(sum(spec.module_shape(t)) for t in cfg.lora_targets)
    return layers * cfg.lora_rank * per_layer


def weights_bytes(spec: ModelShape, cfg: EstimateConfig) -> float:
    """Bytes of the frozen weights: the model's own size where known, unless a precision
    was asked for (``--precision int4``: QLoRA's quantized base), which then wins."""
    if spec.weights_bytes and "precision" not in cfg.model_fields_set:
        return spec.weights_bytes
    return spec.n_params * BYTES_PER_WEIGHT[cfg.precision]


def estimate_memory(spec: ModelShape, cfg: EstimateConfig, seq_len: int) -> MemoryEstimate:
    """Peak memory of LoRA training at ``seq_len`` tokens per sequence."""
    weights = weights_bytes(spec, cfg)
    lora = lora_param_count(spec, cfg) * 16
    s, b, h, a = seq_len, cfg.batch_size, spec.hidden_size, spec.n_heads
    act_scale = 2.0 if cfg.precision == "fp32" else 1.0
    per_layer = s * b * h * (34 + 5 * a * s / h) * act_scale
    if cfg.gradient_checkpointing:
        layer_acts = spec.n_layers * s * b * h * 2 * act_scale + per_layer
    else:
        layer_acts = spec.n_layers * per_layer
    logits = 2 * b * s * spec.vocab_size * 4
    parts = [weights / _GB, lora / _GB, (layer_acts + logits) / _GB, RUNTIME_OVERHEAD_GB]
    total = sum(parts)
    usable = cfg.memory_budget_gb * cfg.usable_fraction
    return MemoryEstimate(
        weights_gb=round(parts[0], 3),
        lora_gb=round(parts[1], 3),
        activations_gb=round(parts[2], 3),
        overhead_gb=parts[3],
        total_gb=round(total, 3),
        budget_gb=cfg.memory_budget_gb,
        usable_gb=round(usable, 2),
        fits=total <= usable,
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_training(
    n_examples: int,
    tokens_per_epoch: int,
    cfg: EstimateConfig,
    spec: ModelShape | None = None,
    seq_len: int = 512,
    tokens_estimated: bool = False,
    sequences_per_example: int = 1,
) -> Estimate:
    """Estimate time (and, with a model spec, memory) of fine-tuning on this data.

    ``tokens_per_epoch`` counts every sequence trained on. A DPO pair trains on two
    (``sequences_per_example=2``: the prompt with each output), so its batches hold twice
    the sequences, which the memory figure accounts for.
    """
    epochs = resolve_epochs(n_examples, cfg.n_epochs)
    total = tokens_per_epoch * epochs
    if cfg.throughput_tokens_per_s is not None:
        tps, source = cfg.throughput_tokens_per_s, "measured"
    else:
        tps = DEFAULT_THROUGHPUT[cfg.backend]
        if spec is not None:
            tps *= REFERENCE_PARAMS / spec.n_params
        source = f"default for {cfg.backend}" + ("" if spec else " (135M-parameter model)")
    seconds = total / tps if tps > 0 else 0.0
    memory = None
    if spec is not None:
        per_batch = cfg.batch_size * sequences_per_example
        memory = estimate_memory(spec, cfg.model_copy(update={"batch_size": per_batch}), seq_len)
    msg = f"{epochs} epoch(s) over {total:,} tokens ≈ {_duration(seconds)} at {tps:,.0f} tok/s"
    if sequences_per_example == 2:
        msg += " (DPO: each pair runs its prompt with both outputs)"
    if memory is not None:
        verdict = "fits" if memory.fits else "does NOT fit"
        msg += (
            f"; needs ≈ {memory.total_gb:.1f} GB, {verdict} in {memory.usable_gb:.1f} GB usable "
            f"of {memory.budget_gb:.0f} GB"
        )
    if memory is not None and spec is not None and cfg.precision in QUANTIZED:
        unquantized = spec.weights_bytes or spec.n_params * BYTES_PER_WEIGHT["bf16"]
        msg += (
            f" (QLoRA: {cfg.precision} weights {memory.weights_gb:.2f} GB instead of "
            f"{unquantized / _GB:.2f} GB unquantized)"
        )
    return Estimate(
        n_examples=n_examples,
        epochs=epochs,
        tokens_per_epoch=tokens_per_epoch,
        tokens_estimated=tokens_estimated,
        sequences_per_example=sequences_per_example,
        total_tokens=total,
        throughput_tokens_per_s=round(tps, 1),
        throughput_source=source,
        seconds=round(seconds, 1),
        lora_params=lora_param_count(spec, cfg) if spec is not None else None,
        memory=memory,
        message=msg,
    )
