"""The tiny test model loads in both engines, and both greedy-decode the same tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_model import IM_END, IM_START, build_tiny_model  # tests/ is on sys.path (conftest)

PROMPTS = ["Hello there!", "Tell me a joke about apples and a café ☕"]
N_TOKENS = 16


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir), local_files_only=True)


def _chat_ids(tokenizer: Any, content: str) -> list[int]:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer.encode(prompt, add_special_tokens=False))


def test_files_and_config(tiny_dir: Path) -> None:
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (tiny_dir / name).is_file(), name
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] == 64
    assert config["num_hidden_layers"] == 2
    assert config["rope_theta"] == 10000.0  # top level, for mlx_lm
    tokenizer = json.loads((tiny_dir / "tokenizer.json").read_text())
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"])


def test_same_seed_same_weights(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=3)
    again = build_tiny_model(tmp_path / "b", seed=3)
    other = build_tiny_model(tmp_path / "c", seed=4)
    weights = (first / "model.safetensors").read_bytes()
    assert weights == (again / "model.safetensors").read_bytes()
    assert weights != (other / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_chat_template_renders_chatml(hf_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
    )
    prompt = hf_tokenizer.apply_chat_template(
        messages[:2], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_eos_is_im_end(tiny_dir: Path, hf_tokenizer: Any) -> None:
    eos_id = hf_tokenizer.convert_tokens_to_ids(IM_END)
    assert hf_tokenizer.eos_token == IM_END
    assert hf_tokenizer.eos_token_id == eos_id
    assert hf_tokenizer.pad_token is not None
    assert hf_tokenizer.pad_token_id != eos_id
    assert json.loads((tiny_dir / "config.json").read_text())["eos_token_id"] == eos_id
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == eos_id


def test_special_tokens_are_single_ids(hf_tokenizer: Any) -> None:
    ids = hf_tokenizer.encode(f"{IM_START}user\nhi{IM_END}", add_special_tokens=False)
    assert ids[0] == hf_tokenizer.convert_tokens_to_ids(IM_START)
    assert ids[-1] == hf_tokenizer.convert_tokens_to_ids(IM_END)
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


@pytest.mark.parametrize(
    "text",
    [
        "Crème brûlée in Zürich, São Paulo — naïve façade! 🍎🍐 👩‍💻 日本語 ✓",
        "  leading spaces,\ttabs\nand\n\nnewlines  ",
        "Paris is the capital of France.",
    ],
)
def test_byte_level_round_trip(hf_tokenizer: Any, text: str) -> None:
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert hf_tokenizer.decode(ids) == text


@pytest.fixture(scope="module")
def torch_greedy(tiny_dir: Path, hf_tokenizer: Any) -> dict[str, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_dir), dtype=torch.float32, local_files_only=True
    )
    model.eval()
    result: dict[str, list[int]] = {}
    for content in PROMPTS:
        ids = _chat_ids(hf_tokenizer, content)
        inputs = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=N_TOKENS,
                do_sample=False,
                pad_token_id=hf_tokenizer.pad_token_id,
            )
        result[content] = out[0, len(ids) :].tolist()
    return result


@pytest.fixture(scope="module")
def mlx_greedy(tiny_dir: Path) -> dict[str, list[int]]:
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(tiny_dir))
    model.set_dtype(mx.float32)
    result: dict[str, list[int]] = {}
    for content in PROMPTS:
        ids = _chat_ids(tokenizer, content)
        result[content] = [
            response.token
            for response in stream_generate(
                model, tokenizer, ids, max_tokens=N_TOKENS, sampler=make_sampler(temp=0.0)
            )
        ]
    return result


def test_loads_in_torch(torch_greedy: dict[str, list[int]]) -> None:
    assert all(len(tokens) > 0 for tokens in torch_greedy.values())


def test_loads_in_mlx(tiny_dir: Path, mlx_greedy: dict[str, list[int]]) -> None:
    from mlx_lm import load

    _, tokenizer = load(str(tiny_dir))
    assert tokenizer.convert_tokens_to_ids(IM_END) in tokenizer.eos_token_ids
    assert all(len(tokens) > 0 for tokens in mlx_greedy.values())


def test_same_greedy_tokens_in_both_engines(
    torch_greedy: dict[str, list[int]], mlx_greedy: dict[str, list[int]]
) -> None:
    for content in PROMPTS:
        assert mlx_greedy[content] == torch_greedy[content], content
    # A meaningful comparison: at least one prompt runs the full length without eos.
    assert max(len(tokens) for tokens in torch_greedy.values()) == N_TOKENS
