"""Token statistics with a locally trained tokenizer, and the training estimate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from datalab.estimate import (
    EstimateConfig,
    ModelShape,
    estimate_memory,
    estimate_training,
    load_model_shape,
    lora_param_count,
    resolve_epochs,
)
from datalab.formats import ChatRecord, parse_record
from datalab.tokens import TokenCounter, TokenizerLike, recommend_max_length

pytest_plugins = ["dl_fixtures"]


def _rec(user: str, answer: str) -> ChatRecord:
    _, rec, _ = parse_record(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]},
        1,
    )
    assert rec is not None
    return rec


def test_recommended_max_length_rounds_p95_up_and_caps() -> None:
    assert recommend_max_length(1, None) == 128
    assert recommend_max_length(129, None) == 256
    assert recommend_max_length(512, None) == 512
    assert recommend_max_length(5000, None) == 2048
    assert recommend_max_length(5000, 1024) == 1024
    assert recommend_max_length(5000, 8192, cap=4096) == 4096


def test_token_counter_uses_the_chat_template(dl_tokenizer: Any) -> None:
    assert isinstance(dl_tokenizer, TokenizerLike)
    counter = TokenCounter(dl_tokenizer)
    rec = _rec("hello world", "the quick brown fox")
    rendered = counter.render(rec)
    assert rendered == (
        "<|im_start|>user\nhello world<|im_end|>\n"
        "<|im_start|>assistant\nthe quick brown fox<|im_end|>\n"
    )
    n = counter.add(rec)
    assert n == len(dl_tokenizer.encode(rendered))
    for i in range(19):
        counter.add(_rec("hello " * (i + 1), "world " * (i + 1)))
    section = counter.section(None, max_length=64, context=1024, cap=2048)
    assert section is not None and section.rendering == "chat_template"
    assert section.n_examples == 20 and section.min <= section.median <= section.p95 <= section.max
    assert section.n_over_max_length == sum(1 for c in counter.counts if c > 64)
    assert section.n_over_max_length > 0
    assert section.recommended_max_length % 128 == 0
    keep = [i % 2 == 0 for i in range(20)]
    assert counter.section(keep, None, None, 2048).n_examples == 10  # type: ignore[union-attr]


class _PlainTokenizer:
    """Only ``encode``: the minimal TokenizerLike."""

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def test_plain_encoders_fall_back_to_chatml() -> None:
    counter = TokenCounter(_PlainTokenizer())
    n = counter.add(_rec("a b c", "d e"))
    # "<|im_start|>user", "a", "b", "c<|im_end|>", "<|im_start|>assistant", "d", "e<|im_end|>"
    assert n == 7
    section = counter.section(None, None, None, 2048)
    assert section is not None and section.rendering == "chatml"


SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}


def test_model_spec_counts_smollm2_parameters(tmp_path: Path) -> None:
    spec = ModelShape.from_hf_config(SMOLLM2_135M)
    assert spec.n_params == pytest.approx(134_515_008, rel=1e-3)
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M))
    assert load_model_shape(tmp_path) == spec
    assert load_model_shape(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("n", "epochs"), [(10, 10), (20, 5), (40, 3), (5000, 3), (10_000, 2), (30_000, 1), (1, 25)]
)
def test_auto_epochs_follow_openai(n: int, epochs: int) -> None:
    assert resolve_epochs(n, "auto") == epochs
    assert resolve_epochs(n, 4) == 4


def test_memory_scales_with_bytes_per_weight_and_budget() -> None:
    spec = ModelShape.from_hf_config(SMOLLM2_135M)
    mem = {
        p: estimate_memory(spec, EstimateConfig(precision=p), 512)
        for p in ("fp32", "bf16", "int8", "int4")
    }
    assert mem["fp32"].weights_gb == pytest.approx(2 * mem["bf16"].weights_gb, rel=1e-2)
    assert mem["bf16"].weights_gb == pytest.approx(2 * mem["int8"].weights_gb, rel=1e-2)
    assert mem["bf16"].weights_gb == pytest.approx(4 * mem["int4"].weights_gb, rel=1e-2)
    assert mem["bf16"].fits and mem["bf16"].usable_gb == pytest.approx(11.2)
    assert not estimate_memory(spec, EstimateConfig(memory_budget_gb=1.0), 512).fits
    # LoRA on q and v: rank x (in + out) per matrix and layer.
    assert lora_param_count(spec, EstimateConfig(lora_rank=8)) == 30 * 8 * (
        (576 + 576) + (576 + 192)
    )


def test_time_uses_measured_throughput_when_given() -> None:
    spec = ModelShape.from_hf_config(SMOLLM2_135M)
    default = estimate_training(100, 10_000, EstimateConfig(n_epochs=2), spec)
    assert default.total_tokens == 20_000 and default.throughput_source.startswith("default")
    measured = estimate_training(
        100, 10_000, EstimateConfig(n_epochs=2, throughput_tokens_per_s=200), spec
    )
    assert measured.seconds == 100.0 and measured.throughput_source == "measured"
    bigger = ModelShape.from_hf_config({**SMOLLM2_135M, "num_hidden_layers": 60})
    slower = estimate_training(100, 10_000, EstimateConfig(n_epochs=2), bigger)
    assert slower.seconds > default.seconds
    assert estimate_training(100, 10_000, EstimateConfig(), None).memory is None
