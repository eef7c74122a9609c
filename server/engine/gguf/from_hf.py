"""Convert a Llama-family Hugging Face folder (safetensors) to a GGUF file llama.cpp serves.

The file is what llama.cpp's own ``convert_hf_to_gguf.py`` writes for ``LlamaModel``: the
``llama.*`` hyperparameters, a ``gpt2`` (byte-level BPE) tokenizer with its merges, special
ids and chat template (``gguf.SpecialVocab``), tensor names from the ``gguf`` package's
tensor-name map, and the q/k projection rows permuted into llama.cpp's rotary layout
(`permute_rows`). Tied embeddings write no ``output.weight`` (llama.cpp reuses
``token_embd``). Output types: ``f32``, ``f16``, ``q8_0`` and ``q4_0`` (``gguf.quants``); as in
llama.cpp, 1-D tensors (norms) always stay f32, and a tensor whose rows do not split into
32-value blocks falls back to f16. Under ``q4_0`` the output projection and the token
embeddings stay Q8_0: llama-quantize keeps them at higher precision too (Q6_K, which the
``gguf`` package cannot write), and 4 bits there cost the most quality.

The reverse direction (GGUF → HF, for the embedded model) is `server.engine.gguf.to_hf`.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: the output types: the tensor type of 2-D weights (1-D ones stay f32)
OUT_TYPES = ("f32", "f16", "q8_0", "q4_0")
#: architectures whose GGUF q/k rows are permuted by convert_hf_to_gguf.py (LlamaModel)
PERMUTED_QK = frozenset({"llama"})
_LLAMA_MODEL_TYPES = frozenset({"llama"})
#: tensors kept at Q8_0 in a q4_0 file (the output projection, and the embeddings it may share)
_Q4_KEEP_Q8 = frozenset({"output.weight", "token_embd.weight"})
#: HF's LlamaConfig default, for a config that names no rope_theta anywhere
_DEFAULT_ROPE_THETA = 10000.0


def permute_rows(weights: npt.NDArray[Any], n_head: int, n_head_kv: int | None) -> Any:
    """convert_hf_to_gguf's ``LlamaModel.permute`` of the rows (output dim) of `weights`.

    HF stores each head's rotary pairs as (first half, second half); llama.cpp's rope
    rotates interleaved pairs, so each head's rows are reordered to interleave the halves.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def convert_hf_to_gguf(src: Path, out: Path, out_type: str = "f16") -> Path:
    """Write the Llama-family HF model folder `src` as the GGUF file `out`.

    Args:
        src: a folder with ``config.json``, ``*.safetensors`` and a byte-level BPE
            tokenizer (``tokenizer.json``).
        out: the .gguf file to write (replaced atomically if it exists).
        out_type: ``f32``, ``f16``, ``q8_0`` or ``q4_0``.

    Raises:
        ValueError: not a Llama model, an unsupported tokenizer or rope scaling, an
            unknown output type, or a tensor with no GGUF name.
    """
    import gguf

    if out_type not in OUT_TYPES:
        raise ValueError(f"unknown GGUF output type {out_type!r}: choose one of {OUT_TYPES}")
    src, out = Path(src), Path(out)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") not in _LLAMA_MODEL_TYPES:
        raise ValueError(
            f"{src}: model_type {config.get('model_type')!r} is not supported by the GGUF "
            "converter (Llama-family models only)"
        )
    n_blocks = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        _write_hparams(writer, config, src, out_type)
        _write_vocab(writer, src, int(config["vocab_size"]))
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
        tied = bool(config.get("tie_word_embeddings", False))
        for key, value in _read_safetensors(src):
            if key.endswith(".rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                continue  # recomputed by llama.cpp / shared with token_embd
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ValueError(f"{src}: no GGUF tensor name for {key}")
            if key.endswith("self_attn.q_proj.weight"):
                value = permute_rows(value, n_head, n_head)
            elif key.endswith("self_attn.k_proj.weight"):
                value = permute_rows(value, n_head, n_head_kv)
            _add_tensor(writer, name, value, out_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out


def _write_hparams(writer: Any, config: dict[str, Any], src: Path, out_type: str) -> None:
    """The general.* and llama.* keys, as LlamaModel.set_gguf_parameters writes them."""
    import gguf

    hidden, n_head = int(config["hidden_size"]), int(config["num_attention_heads"])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(src.name)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if (head_dim := config.get("head_dim")) is not None:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[out_type]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // n_head))
    scaling = _rope_scaling(config)
    if scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling)


def _rope_theta(config: dict[str, Any]) -> float:
    """The rope base: top-level ``rope_theta`` (what mlx_lm reads), else transformers 5's
    ``rope_parameters``; the two must agree, or the engines would rotate differently."""
    top = config.get("rope_theta")
    nested = (config.get("rope_parameters") or {}).get("rope_theta")
    if top is not None and nested is not None and float(top) != float(nested):
        raise ValueError(f"config.json: rope_theta {top} disagrees with rope_parameters {nested}")
    theta = top if top is not None else nested
    return float(theta) if theta is not None else _DEFAULT_ROPE_THETA


def _rope_scaling(config: dict[str, Any]) -> float | None:
    """A linear rope scaling factor, None for none; other kinds are refused."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return float(scaling["factor"])
    raise ValueError(f"rope scaling {kind!r} is not supported by the GGUF converter")


def _write_vocab(writer: Any, src: Path, vocab_size: int) -> None:
    """A byte-level BPE vocabulary, as convert_hf_to_gguf's ``_set_vocab_gpt2``."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ValueError(f"{src}: the tokenizer has ids beyond vocab_size {vocab_size}")
    reverse = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(reverse[i])
        if i not in added:
            types.append(gguf.TokenType.NORMAL)
        else:
            special = added[i].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(src))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(src, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


def _pre_tokenizer(src: Path) -> str:
    """llama.cpp's name for the folder's pre-tokenizer (``tokenizer.ggml.pre``).

    llama.cpp's converter recognises a tokenizer by hashing its output on a probe text; the
    two shapes our models have are recognised here by their structure instead: the GPT-2
    regex alone (``gpt-2``), and individual digits before it (SmolLM's ``smollm``).
    """
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    if (data.get("model") or {}).get("type") != "BPE":
        raise ValueError(f"{src}: only byte-level BPE tokenizers convert to GGUF")
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if steps else {}
    if kinds[-1:] == ["ByteLevel"] and byte_level.get("use_regex", True):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    raise ValueError(f"{src}: pre-tokenizer {kinds} has no known llama.cpp equivalent")


def _add_tensor(writer: Any, name: str, value: npt.NDArray[Any], out_type: str) -> None:
    import gguf
    from gguf.quants import QuantError, quantize

    data = np.ascontiguousarray(value, dtype=np.float32)
    if data.ndim <= 1 or out_type == "f32":  # norms stay f32, as llama.cpp keeps them
        writer.add_tensor(name, data)
        return
    if out_type in ("q8_0", "q4_0"):
        q4 = out_type == "q4_0" and name not in _Q4_KEEP_Q8
        qtype = gguf.GGMLQuantizationType.Q4_0 if q4 else gguf.GGMLQuantizationType.Q8_0
        try:
            writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
            return
        except QuantError:  # rows not a multiple of the 32-value block: f16, as llama.cpp
            pass
    writer.add_tensor(name, data.astype(np.float16))


_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _read_safetensors(src: Path) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """Every tensor of the folder's safetensors files, as float32 arrays (bf16 included).

    Read by hand (memory-mapped) because safetensors' numpy loader has no bfloat16.
    """
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{src} holds no .safetensors weights")
    for path in files:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        start = 8 + size
        for key, info in sorted(header.items()):
            if key == "__metadata__":
                continue
            dtype = _DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: {key} is {info['dtype']}, not a float tensor")
            begin, end = info["data_offsets"]
            count = (end - begin) // np.dtype(dtype).itemsize
            raw = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=(count,))
            if info["dtype"] == "BF16":  # bf16 is the high half of a float32
                array = (raw.astype(np.uint32) << 16).view(np.float32)
            else:
                array = raw.astype(np.float32)
            yield key, array.reshape(info["shape"])


def main(argv: list[str] | None = None) -> None:
    """``python -m server.engine.gguf.from_hf SRC OUT [--out-type f16]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="a Llama-family Hugging Face folder")
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--out-type", choices=OUT_TYPES, default="f16")
    args = parser.parse_args(argv)
    print(convert_hf_to_gguf(args.src, args.out, args.out_type))


if __name__ == "__main__":
    main()
