"""HF → GGUF conversion: llama.cpp reads our file as the same model MLX and torch load."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from server.engine.base import PAUSE, GenerationParams
from server.engine.generation import complete
from server.engine.gguf.backend import GGUFEngine
from server.engine.gguf.from_hf import convert_hf_to_gguf
from server.engine.templates import ChatTemplate
from tests.prompts import PARIS_QUESTION

# a prompt and a few tokens the tiny model greedy-decodes after it (ids of its vocabulary)
SEQUENCE = [172, 8, 56, 262, 541, 528, 27, 687, 284, 470, 2, 433]
NEVER: Callable[[], bool] = lambda: False  # noqa: E731


def fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items()}


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def torch_logits(folder: Path, ids: list[int]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(path: Path, ids: list[int]) -> Any:
    """Every position's logits, KV cache in f32 (as the GGUF engine keeps an f32 model's)."""
    import llama_cpp

    f32 = llama_cpp.GGML_TYPE_F32
    llama = llama_cpp.Llama(
        str(path), n_ctx=256, logits_all=True, type_k=f32, type_v=f32, verbose=False
    )
    llama.eval(ids)
    return np.array(llama.scores[: len(ids)])


def test_metadata_is_what_llama_cpp_converter_writes(
    tiny_gguf_path: Path, tiny_model_path: Path
) -> None:
    config = json.loads((tiny_model_path / "config.json").read_text())
    meta = fields(tiny_gguf_path)
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 0
    expected = {
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.freq_base": config["rope_theta"],
        "llama.vocab_size": config["vocab_size"],
        "llama.rope.dimension_count": config["head_dim"],
    }
    assert {key: meta[key] for key in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == config["vocab_size"] and len(meta["tokenizer.ggml.merges"]) > 100
    assert meta["tokenizer.ggml.eos_token_id"] == config["eos_token_id"]
    assert meta["tokenizer.ggml.padding_token_id"] == config["pad_token_id"]
    control = {tokens[i] for i, t in enumerate(meta["tokenizer.ggml.token_type"]) if t == 3}
    assert control == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    template = json.loads((tiny_model_path / "tokenizer_config.json").read_text())["chat_template"]
    assert meta["tokenizer.chat_template"] == template
    types = tensor_types(tiny_gguf_path)
    assert len(types) == 2 + 9 * config["num_hidden_layers"] + 1  # untied: output.weight too
    assert set(types.values()) == {"F32"} and "output.weight" in types


def test_f32_logits_match_torch(tiny_gguf_path: Path, tiny_model_path: Path) -> None:
    """A wrong q/k permutation or rope base would move these by whole units."""
    ours = llama_cpp_logits(tiny_gguf_path, SEQUENCE)
    ref = torch_logits(tiny_model_path, SEQUENCE)
    assert np.abs(ours - ref).max() < 1e-3


def test_engine_greedy_tokens_match_torch_and_tokenizers_agree(tiny_gguf_path: Path) -> None:
    from server.engine.torch.backend import TorchEngine

    gguf_engine = GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent)
    torch_engine = TorchEngine(tiny_gguf_path.parent)
    params = GenerationParams(max_tokens=24, temperature=0.0)
    for question in ("What is the capital of France?", "Tell me a joke."):
        ids = ChatTemplate(gguf_engine.tokenizer).encode([{"role": "user", "content": question}])
        ours = [s.token for s in gguf_engine.token_stream(ids, params, NEVER) if s is not PAUSE]
        theirs = [s.token for s in torch_engine.token_stream(ids, params, NEVER)]
        assert ours == theirs
    # the GGUF's own vocabulary, merges and pre-tokenizer tokenize as the HF tokenizer does
    for text in ["The cat likes 3.14 apples!", "<|im_start|>user\nnaïve 🍎<|im_end|>\n"]:
        hf = gguf_engine.tokenizer.encode(text, add_special_tokens=False)
        assert gguf_engine.llama.tokenize(text.encode(), add_bos=False, special=True) == hf


@pytest.mark.parametrize(
    ("out_type", "weights", "tolerance"), [("f16", "F16", 0.05), ("q8_0", "Q8_0", 0.5)]
)
def test_f16_and_q8_0_keep_norms_f32_and_stay_close(
    tiny_model_path: Path, tmp_path: Path, out_type: str, weights: str, tolerance: float
) -> None:
    out = convert_hf_to_gguf(tiny_model_path, tmp_path / f"tiny-{out_type}.gguf", out_type)
    types = tensor_types(out)
    assert {t for name, t in types.items() if name.endswith("norm.weight")} == {"F32"}
    assert {t for name, t in types.items() if not name.endswith("norm.weight")} == {weights}
    ours = llama_cpp_logits(out, SEQUENCE)
    ref = torch_logits(tiny_model_path, SEQUENCE)
    assert np.abs(ours - ref).max() < tolerance
    assert (ours.argmax(axis=1) == ref.argmax(axis=1)).all()


def test_tied_embeddings_write_no_output_tensor(tiny_model_path: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "tied"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(folder / "model.safetensors"), {"format": "pt"})
    out = convert_hf_to_gguf(folder, tmp_path / "tied.gguf", "f32")
    assert "output.weight" not in tensor_types(out)
    ours = llama_cpp_logits(out, SEQUENCE)
    assert np.abs(ours - torch_logits(folder, SEQUENCE)).max() < 1e-3


def test_refuses_what_it_cannot_convert(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="output type"):
        convert_hf_to_gguf(tiny_model_path, tmp_path / "x.gguf", "q4_k")
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    with pytest.raises(ValueError, match="Llama-family"):
        convert_hf_to_gguf(folder, tmp_path / "x.gguf", "f32")
    bad_rope = {**config, "rope_parameters": {"rope_type": "default", "rope_theta": 5.0}}
    (folder / "config.json").write_text(json.dumps(bad_rope))
    with pytest.raises(ValueError, match="rope_theta"):
        convert_hf_to_gguf(folder, tmp_path / "x.gguf", "f32")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp*"))


def test_embedded_model_converts_to_q8_0_and_answers(
    embedded_model_path: Path, tmp_path: Path
) -> None:
    """SmolLM2: bf16 safetensors, tied embeddings, 3 KV heads for 9 query heads."""
    folder = tmp_path / "smollm2"
    folder.mkdir()
    for item in embedded_model_path.iterdir():
        if item.is_file() and item.suffix != ".gguf" and not item.name.startswith("."):
            (folder / item.name).symlink_to(item)
    out = convert_hf_to_gguf(folder, folder / "smollm2-q8_0.gguf", "q8_0")
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.file_type"].contents() == 7
    assert reader.fields["llama.rope.freq_base"].contents() == 100000.0
    assert "output.weight" not in {t.name for t in reader.tensors}
    engine = GGUFEngine(out, folder)
    assert "<|im_start|>" in engine.llama.metadata["tokenizer.chat_template"]
    ids = ChatTemplate(engine.tokenizer).encode([{"role": "user", "content": PARIS_QUESTION}])
    answer = complete(engine, ids, GenerationParams(max_tokens=20, temperature=0.0), NEVER)
    assert "Paris" in answer.text
