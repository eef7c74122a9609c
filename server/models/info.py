"""Facts about a model read from its files without loading it (`pomar models info`).

The parameter count is summed from tensor shapes: the JSON header of each `*.safetensors`
file (8-byte little-endian length, then the header) or the tensor infos of a GGUF file.
MLX-quantized folders (`quantization: {bits, group_size}` in config.json) store weights
packed into uint32, `32 / bits` values each, beside `.scales` and `.biases` per group: the
logical count unpacks the former and skips the latter.

Memory for the weights alone, per parameter: FP32 4 bytes, FP16 2 bytes, and for MLX-style
affine quantization with groups of `group_size` (64) values sharing an fp16 scale and an
fp16 bias, `bits / 8 + 4 / group_size` bytes — INT8 1.0625, INT4 0.5625. As a GGUF, each
of llama.cpp's types at its bits per weight / 8 (`server.engine.gguf.quantize.QUANT_BITS`:
Q8_0 8.5, Q4_K_M 4.84, ...), what `pomar models convert --to gguf --quant` makes. Running the model
needs more: the KV cache (layers × 2 × KV heads × head dim × tokens × 2 bytes in fp16, at
`min(context, 8192)` tokens unless another context is asked for) and activations and
runtime buffers, reckoned here as 10 % of the weights. A precision *fits* when weights +
KV cache + that 10 % stay within the budget — by default the machine's RAM minus 4 GiB
for the system and other applications (so 12 GiB on a 16 GiB Mac).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ByteSize, TypeAdapter

from server.engine.gguf.quantize import QUANT_BITS
from server.modelfiles import read_json_object
from server.models.gguf_meta import read_gguf_meta
from server.models.importing import detect_format
from server.models.memory import (
    ADMISSION_CONTEXT,
    default_budget,
    held_weights,
    kv_cache_bytes,
    runtime_bytes,
)
from server.models.store import CatalogEntry, CatalogError, folder_size

KV_CONTEXT_CAP = 8192
"""Tokens the default KV-cache estimate assumes at most (long-context models rarely use all)."""


GROUP_SIZE = 64
_BYTES_PER_PARAM = {
    "fp32": 4.0,
    "fp16": 2.0,
    "int8": 1 + 4 / GROUP_SIZE,
    "int4": 0.5 + 4 / GROUP_SIZE,
}
_SIZE = TypeAdapter(ByteSize)


class MemoryEstimate(BaseModel):
    """Memory a model needs at one precision, and whether it fits the budget."""

    precision: str
    #: bits per weight of the type (the GGUF types; None for the MLX/torch rows)
    bits_per_weight: float | None = None
    weights_bytes: int
    #: weights + KV cache + runtime overhead
    runtime_bytes: int
    fits: bool


class ModelInfo(BaseModel):
    """What `pomar models info` reports about one model."""

    id: str | None = None
    path: Path
    format: str
    precision: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    context_length: int | None = None
    chat_template: bool = False
    size_bytes: int
    #: KV-cache bytes (fp16) at `kv_context` tokens; None where the shape is unknown
    kv_cache_bytes: int | None = None
    kv_context: int | None = None
    budget_bytes: int
    memory: list[MemoryEstimate] = []
    #: the same as a GGUF of each llama.cpp type (`convert --to gguf --quant TYPE`)
    gguf_memory: list[MemoryEstimate] = []
    notes: list[str] = []


def parse_size(value: str | int) -> int:
    """Bytes from `16GB`, `512MiB`, `1.5G` or a plain number (GB = 10**9, GiB = 2**30).

    Raises:
        CatalogError: the text is not a size.
    """
    try:
        return int(_SIZE.validate_python(value))
    except ValueError as exc:
        raise CatalogError(f"'{value}' is not a size (say 16GiB, 12GB or 512MiB)") from exc


def model_info(
    target: CatalogEntry | Path, *, budget: int | None = None, context: int | None = None
) -> ModelInfo:
    """Describe a stored model (or a model folder / .gguf file) from its files alone.

    Args:
        target: a catalog entry, a model folder or a .gguf file.
        budget: memory budget in bytes (default :func:`default_budget`).
        context: tokens for the KV-cache estimate (default min(context length, 8192)).

    Raises:
        CatalogError: the path does not exist or holds no weights pomar can read.
    """
    entry = target if isinstance(target, CatalogEntry) else None
    path = target.path if isinstance(target, CatalogEntry) else Path(target).expanduser()
    if not path.exists():
        raise CatalogError(f"{path} does not exist")
    facts = _facts(path)
    fmt, precision = facts.pop("format"), facts.pop("precision")
    budget = default_budget() if budget is None else budget
    info = ModelInfo(
        id=entry.id if entry else None,
        path=path,
        format=entry.format if entry else fmt,
        precision=entry.precision if entry else precision,
        size_bytes=entry.size_bytes if entry else folder_size(path),
        budget_bytes=budget,
        **{k: v for k, v in facts.items() if k in ModelInfo.model_fields},
    )
    kv_shape = facts.get("kv_shape")
    if info.context_length or context:
        info.kv_context = context or min(info.context_length or 0, KV_CONTEXT_CAP)
        if kv_shape is not None:
            info.kv_cache_bytes = kv_cache_bytes(kv_shape, info.kv_context)
    if info.parameters is None:
        info.notes.append("no weights found: parameters and memory unknown")
        return info
    kv = info.kv_cache_bytes or 0
    for name, per_param in _BYTES_PER_PARAM.items():
        info.memory.append(_estimate(name, info.parameters * per_param, kv, budget))
    for name, bits in QUANT_BITS.items():
        info.gguf_memory.append(_estimate(name, info.parameters * bits / 8, kv, budget, bits))
    info.notes.append(
        "weights: params × 4 (fp32), × 2 (fp16), × (bits/8 + 4/64) for int8/int4 "
        "(affine groups of 64, fp16 scale + bias); a GGUF type: params × its bits per "
        "weight / 8 (K-quant mixes as llama.cpp measures them on Llama 2 7B; a model whose "
        "rows are not a multiple of 256 gets larger K-quant files, see docs/models.md)"
    )
    kv_note = (
        "KV cache unknown"
        if info.kv_cache_bytes is None
        else (f"KV cache at {info.kv_context} tokens (fp16)")
    )
    info.notes.append(f"runtime: weights + {kv_note} + 10 % for activations and buffers")
    return info


def _estimate(
    name: str, weights_float: float, kv: int, budget: int, bits: float | None = None
) -> MemoryEstimate:
    weights = math.ceil(weights_float)
    runtime = runtime_bytes(weights, kv)
    return MemoryEstimate(
        precision=name,
        bits_per_weight=bits,
        weights_bytes=weights,
        runtime_bytes=runtime,
        fits=runtime <= budget,
    )


def serving_memory(path: Path, backend: str, context: int = ADMISSION_CONTEXT) -> int:
    """Bytes the model at `path` needs on `backend` with a KV cache of `context` tokens.

    The one estimate (server/models/memory.py) that admission and `pomar doctor` use; a
    model whose files say no KV shape is reckoned without its cache.
    """
    kv = None
    try:
        facts = _facts(path)
    except (CatalogError, OSError, ValueError):
        facts = {}
    if facts.get("kv_shape") is not None:
        tokens = min(context, facts.get("context_length") or context)
        kv = kv_cache_bytes(facts["kv_shape"], tokens)
    return runtime_bytes(held_weights(path, backend), kv)


def _facts(path: Path) -> dict[str, Any]:
    """Architecture, parameters, context, template, KV shape, format of a path."""
    fmt, precision = detect_format(path)
    folder = path if path.is_dir() else path.parent
    safetensors = sorted(folder.glob("*.safetensors")) if path.is_dir() else []
    facts: dict[str, Any] = {"format": fmt, "precision": precision}
    if path.is_dir() and (safetensors or (folder / "config.json").is_file()):
        facts.update(_hf_facts(folder, safetensors))
    gguf = _gguf_file(path)
    if gguf is not None:
        # a folder of both (say the embedded model) takes each fact from HF files first
        for key, value in _gguf_facts(gguf).items():
            if facts.get(key) in (None, False):
                facts[key] = value
    return facts


def _gguf_file(path: Path) -> Path | None:
    from server.errors import ModelLoadError
    from server.modelfiles import find_gguf

    try:
        return find_gguf(path)
    except ModelLoadError as exc:
        raise CatalogError(str(exc)) from exc


def _hf_facts(folder: Path, safetensors: list[Path]) -> dict[str, Any]:
    config = read_json_object(folder / "config.json")
    raw = config.get("text_config")
    text: dict[str, Any] = raw if isinstance(raw, dict) else {}
    cfg = {**text, **config}  # multimodal configs keep the language model's shape inside
    archs = config.get("architectures") or []
    tok_config = read_json_object(folder / "tokenizer_config.json")
    facts: dict[str, Any] = {
        "architecture": archs[0] if archs else config.get("model_type"),
        "context_length": cfg.get("max_position_embeddings") or cfg.get("max_seq_len"),
        "chat_template": bool(tok_config.get("chat_template"))
        or (folder / "chat_template.jinja").is_file()
        or (folder / "chat_template.json").is_file(),
    }
    layers, heads = cfg.get("num_hidden_layers"), cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    if layers and heads and hidden:
        head_dim = cfg.get("head_dim") or hidden // heads
        facts["kv_shape"] = (layers, cfg.get("num_key_value_heads") or heads, head_dim)
    if safetensors:
        quant = config.get("quantization") or config.get("quantization_config") or {}
        facts["parameters"] = sum(_count_safetensors(p, quant) for p in safetensors)
    return facts


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name -> dtype, shape, offsets.

    Raises:
        CatalogError: the file is not a safetensors file.
    """
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 1024**2:  # the format caps headers at 100 MB
                raise ValueError(f"header of {length} bytes")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise CatalogError(f"{path} is not a readable safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise CatalogError(f"{path} is not a readable safetensors file (header not an object)")
    return header


def _count_safetensors(path: Path, quant: dict[str, Any]) -> int:
    """Logical parameters in one safetensors file, read from its header only."""
    header = read_safetensors_header(path)
    total = 0
    for name, meta in header.items():
        if name == "__metadata__" or not isinstance(meta, dict):
            continue
        if name.endswith((".scales", ".biases")) and quant:
            continue  # per-group quantization constants, not parameters
        count = math.prod(meta.get("shape") or [1])
        if meta.get("dtype") == "U32" and f"{name.rsplit('.', 1)[0]}.scales" in header:
            count = count * 32 // _bits(quant, name.rsplit(".", 1)[0])
        total += count
    return total


def _bits(quant: dict[str, Any], module: str) -> int:
    """Bits of a quantized module: its own override in the config, else the default."""
    own = quant.get(module)
    if isinstance(own, dict) and own.get("bits"):
        return int(own["bits"])
    return int(quant.get("bits") or 4)


def _gguf_facts(path: Path) -> dict[str, Any]:
    meta = read_gguf_meta(path)
    field = meta.metadata.get
    arch = field("general.architecture")
    facts: dict[str, Any] = {
        "architecture": arch,
        "parameters": sum(meta.tensors.values()),
        "context_length": field(f"{arch}.context_length"),
        "chat_template": bool(field("tokenizer.chat_template")),
    }
    layers, heads = _num(field(f"{arch}.block_count")), _num(field(f"{arch}.attention.head_count"))
    hidden = _num(field(f"{arch}.embedding_length"))
    if layers and heads and hidden:
        kv_heads = _num(field(f"{arch}.attention.head_count_kv")) or heads
        head_dim = _num(field(f"{arch}.attention.key_length")) or hidden // heads
        facts["kv_shape"] = (layers, kv_heads, head_dim)
    return facts


def _num(value: Any) -> int | None:
    """A GGUF number; per-layer arrays (some architectures vary heads by layer) give their max."""
    if isinstance(value, list):
        value = max((v for v in value if isinstance(v, int | float)), default=None)
    return int(value) if isinstance(value, int | float) and value else None
