"""One memory estimate for a model as an engine holds it: weights, KV cache, runtime buffers.

Admission (loading a model within `POMAR_MAX_MEMORY`), `pomar models info` and
`pomar doctor` reckon the same way: the weights as the engine holds them (MLX and torch
on a CPU compute in float32, so bf16 weights count double; a GGUF is held as its file),
plus the KV cache in fp16 (layers × 2 × KV heads × head dim × tokens × 2 bytes), plus 10 %
of the weights for activations and runtime buffers. Admission counts the KV cache at
`ADMISSION_CONTEXT` tokens (the GGUF engine's first allocation; every engine's cache
grows on demand, and the registry raises a loaded model's figure to what its runner
holds as it grows), `models info` at the context asked for. The fine-tune estimate
(`datalab.estimate`, through `pomar data check --model`) takes its weights from
`held_weights` for the trainer the model would use, and adds what training needs on top
(LoRA state, activations).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from server.modelfiles import find_gguf, read_json_object

GIB = 1 << 30
#: what the system and other programs keep when the budget is "auto"
SYSTEM_RESERVE = 4 * GIB
#: activations and runtime buffers, as a share of the weights' memory
RUNTIME_OVERHEAD = 0.10
#: KV-cache tokens admission reckons with
ADMISSION_CONTEXT = 2048


def total_memory() -> int:
    """Physical memory of this machine in bytes (Linux and macOS)."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def default_budget() -> int:
    """RAM minus what the system needs (4 GiB), at least 1 GiB: POMAR_MAX_MEMORY's default."""
    return max(GIB, total_memory() - SYSTEM_RESERVE)


def kv_cache_bytes(shape: tuple[int, int, int], tokens: int) -> int:
    """An fp16 KV cache of `tokens` positions for (layers, KV heads, head dim)."""
    layers, kv_heads, head_dim = shape
    return layers * 2 * kv_heads * head_dim * tokens * 2


def runtime_bytes(weights: int, kv_cache: int | None) -> int:
    """Weights + KV cache + 10 % of the weights."""
    return weights + (kv_cache or 0) + math.ceil(weights * RUNTIME_OVERHEAD)


def held_weights(path: Path, backend: str) -> int:
    """Bytes of weights as `backend` holds them once loaded."""
    if backend == "gguf":
        gguf = find_gguf(path)
        return gguf.stat().st_size if gguf is not None else 0
    weights = sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))
    weights = weights or sum(p.stat().st_size for p in Path(path).glob("*.bin"))
    config = read_json_object(Path(path) / "config.json")
    if "quantization" not in config and computes_in_fp32(backend):
        width = {"float16": 2, "bfloat16": 2, "float32": 4}.get(
            str(config.get("torch_dtype") or config.get("dtype") or "float32"), 4
        )
        weights = weights * 4 // width
    return weights


def computes_in_fp32(backend: str) -> bool:
    """MLX and torch on a CPU cast weights to float32 (docs/platform.md)."""
    if backend == "mlx":
        try:
            import mlx.core as mx

            return bool(mx.default_device() == mx.cpu)
        except ImportError:
            return True
    if backend == "torch":
        from finetune.devices import pick_device

        return pick_device() == "cpu"
    return False
