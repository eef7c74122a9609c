"""Fixtures for the datalab tests: small hand-made files and a tokenizer built offline.

A plugin module named in each test module's ``pytest_plugins``, not a conftest.py: a
second conftest.py would replace the module other test folders import as ``conftest``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dl_helpers import WriteLines


@pytest.fixture
def write_lines(tmp_path: Path) -> WriteLines:
    """Write a JSONL file from objects (dumped) and raw strings/bytes (written as is)."""
    counter = iter(range(10_000))

    def write(lines: list[Any], name: str | None = None, newline: bytes = b"\n") -> Path:
        path = tmp_path / (name or f"data{next(counter)}.jsonl")
        parts = []
        for item in lines:
            if isinstance(item, bytes):
                parts.append(item)
            elif isinstance(item, str):
                parts.append(item.encode("utf-8"))
            else:
                parts.append(json.dumps(item, ensure_ascii=False).encode("utf-8"))
        path.write_bytes(b"".join(p + newline for p in parts))
        return path

    return write


@pytest.fixture(scope="session")
def dl_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer with a ChatML template, trained here (never downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, how are you today?"]
    tok.train_from_iterator(corpus * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", model_max_length=1024
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}"
    )
    folder = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(folder)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 400,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def dl_tokenizer(dl_tokenizer_dir: Path) -> Any:
    """The tokenizer above, loaded through datalab's own loader."""
    from chatfmt.tokenizer import load_tokenizer

    return load_tokenizer(str(dl_tokenizer_dir))
