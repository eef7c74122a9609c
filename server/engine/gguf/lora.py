"""Convert a `finetune` LoRA adapter (mlx-lm or PEFT format) into a GGUF LoRA adapter.

What llama.cpp's ``llama_adapter_lora_init`` reads (the layout of llama.cpp's own
``convert_lora_to_gguf.py``): ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``, the base's ``general.architecture``, and for each adapted weight
``<gguf name>.weight.lora_a`` (r, in) and ``.lora_b`` (out, r) — PEFT's shapes. llama.cpp
scales the product by ``alpha / r``. Names come from the ``gguf`` package's tensor-name map.

One fix-up is not a rename: for the ``llama`` architecture the HF → GGUF conversion
permutes the rows of the q and k projections (rotary layout), so the same row permutation
is applied to their ``lora_b`` (ΔW = B·A: permuting ΔW's rows permutes B's rows).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np

from finetune.adapters import (
    CONFIG_FILE,
    PEFT_PREFIX,
    PEFT_WEIGHTS,
    convert_mlx_to_peft,
    detect_adapter_format,
)
from server.engine.gguf.from_hf import PERMUTED_QK, permute_rows


def lora_to_gguf(adapter_dir: Path, out: Path, metadata: dict[str, str], base: Path) -> Path:
    """Write the GGUF LoRA of `adapter_dir` to `out` for the GGUF base of `metadata`.

    Args:
        adapter_dir: an adapter folder written by `finetune` (mlx-lm or PEFT format).
        out: the .gguf file to write.
        metadata: the base GGUF's key/values (llama-cpp-python's ``Llama.metadata``).
        base: the base model folder (for an mlx-lm adapter's layer count; may be a file).

    Raises:
        ValueError: the adapter targets a weight the base has no GGUF name for.
    """
    import gguf
    from safetensors.numpy import load_file

    arch = metadata["general.architecture"]
    n_blocks = int(metadata[f"{arch}.block_count"])
    n_head = int(metadata[f"{arch}.attention.head_count"])
    n_head_kv = int(metadata.get(f"{arch}.attention.head_count_kv", n_head))
    with tempfile.TemporaryDirectory(prefix="pomar-peft-") as tmp:
        peft = adapter_dir
        if detect_adapter_format(adapter_dir) == "mlx":
            peft = convert_mlx_to_peft(adapter_dir, Path(tmp), base)
        config = json.loads((peft / CONFIG_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(peft / PEFT_WEIGHTS))
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_blocks)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    # llama.cpp scales by alpha / r; rsLoRA's alpha / sqrt(r) is folded into alpha
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale * rank)
    for key in sorted(tensors):
        module, _, leaf = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        target = names.get_name(module)
        if target is None:
            raise ValueError(f"{adapter_dir}: no GGUF tensor for {module} in a {arch} model")
        value = np.ascontiguousarray(tensors[key], dtype=np.float32)
        if leaf.startswith("B") and arch in PERMUTED_QK:
            if module.endswith("q_proj"):
                value = np.ascontiguousarray(permute_rows(value, n_head, n_head))
            elif module.endswith("k_proj"):
                value = np.ascontiguousarray(permute_rows(value, n_head, n_head_kv))
        writer.add_tensor(f"{target}.weight.lora_{'a' if leaf.startswith('A') else 'b'}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
