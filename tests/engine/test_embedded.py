"""The embedded SmolLM2 model: located without importing its package, imported once, and
served by both engines (the slow tests share the session's import from conftest)."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from server.models import embedded
from server.models.embedded import (
    EMBEDDED_MODEL_ID,
    INSTALL_HINT,
    MARKER_NAME,
    EmbeddedModelMissing,
    embedded_gguf_path,
    ensure_embedded_model,
)

QUESTION = "What is the capital of France?"


def _hide_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == embedded.EMBEDDED_PACKAGE else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hide_package(monkeypatch)
    with pytest.raises(EmbeddedModelMissing, match=re.escape(INSTALL_HINT)):
        embedded_gguf_path()
    with pytest.raises(EmbeddedModelMissing) as caught:
        ensure_embedded_model(tmp_path / "models", progress=False)
    assert INSTALL_HINT in str(caught.value)
    assert not (tmp_path / "models" / EMBEDDED_MODEL_ID).exists()


def test_gguf_is_located_without_importing_the_package() -> None:
    if importlib.util.find_spec(embedded.EMBEDDED_PACKAGE) is None:
        pytest.skip(f"{INSTALL_HINT} to run this test")
    path = embedded_gguf_path()
    assert path.is_file()
    assert path.name == embedded.EMBEDDED_GGUF_NAME
    assert embedded.EMBEDDED_PACKAGE not in sys.modules  # its __init__ needs `llm`


@pytest.mark.slow
def test_imported_folder_layout(embedded_model_path: Path) -> None:
    assert embedded_model_path.name == EMBEDDED_MODEL_ID
    marker = json.loads((embedded_model_path / MARKER_NAME).read_text())
    assert marker["format"] == embedded.IMPORT_FORMAT
    assert marker["source"]["file"] == embedded.EMBEDDED_GGUF_NAME

    config = json.loads((embedded_model_path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["rope_theta"] == 100000.0  # top level, or mlx_lm uses its default
    assert "quantization_config" not in config

    with (embedded_model_path / "model.safetensors").open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    assert {info["dtype"] for info in header.values()} == {"BF16"}

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path), local_files_only=True)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert config["eos_token_id"] == im_end
    generation = json.loads((embedded_model_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == im_end
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_second_call_is_fast_and_does_not_rebuild(embedded_model_path: Path) -> None:
    marker = embedded_model_path / MARKER_NAME
    weights = embedded_model_path / "model.safetensors"
    before = (marker.read_bytes(), marker.stat().st_mtime_ns, weights.stat().st_ino)

    started = time.perf_counter()
    again = ensure_embedded_model(embedded_model_path.parent, progress=False)
    assert time.perf_counter() - started < 2.0
    assert again == embedded_model_path
    assert (marker.read_bytes(), marker.stat().st_mtime_ns, weights.stat().st_ino) == before
    assert not [p for p in embedded_model_path.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_package_gone_keeps_using_the_import(
    embedded_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide_package(monkeypatch)
    assert ensure_embedded_model(embedded_model_path.parent, progress=False) == (
        embedded_model_path
    )


@pytest.fixture(scope="module")
def prompt_ids(embedded_model_path: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path), local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer.encode(prompt, add_special_tokens=False))


@pytest.fixture(scope="module")
def mlx_answer(embedded_model_path: Path, prompt_ids: list[int]) -> tuple[str, list[int]]:
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(embedded_model_path))
    model.set_dtype(mx.float32)  # the CPU path's dtype (bf16 matmuls skip BLAS)
    text, tokens = "", []
    for response in stream_generate(
        model, tokenizer, prompt_ids, max_tokens=24, sampler=make_sampler(temp=0.0)
    ):
        text += response.text
        tokens.append(response.token)
    return text, tokens


@pytest.mark.slow
def test_mlx_answers_paris(mlx_answer: tuple[str, list[int]]) -> None:
    text, tokens = mlx_answer
    assert "Paris" in text
    assert len(tokens) < 24  # stopped on <|im_end|>, did not run to the limit


@pytest.mark.slow
def test_torch_answers_the_same(
    embedded_model_path: Path, prompt_ids: list[int], mlx_answer: tuple[str, list[int]]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(embedded_model_path), dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path), local_files_only=True)
    inputs = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=24, do_sample=False
        )
    tokens = out[0, len(prompt_ids) :].tolist()
    assert "Paris" in tokenizer.decode(tokens, skip_special_tokens=True)
    assert tokens[:20] == mlx_answer[1][:20]
