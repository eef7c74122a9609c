"""One set of sampling rules: the three engines agree on greedy tokens, and the torch and
GGUF engines, which share the CPU sampler, agree on seeded ones too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server.engine.base import PAUSE, GenerationParams, Sampled
from server.engine.templates import ChatTemplate
from server.models.loading import load_engine

PROMPT = [{"role": "user", "content": "Tell me about the orchard."}]
GREEDY = GenerationParams(max_tokens=12, temperature=0.0, top_logprobs=2)
SEEDED = GenerationParams(max_tokens=12, temperature=1.0, top_p=0.9)


@pytest.fixture(scope="module")
def engines(tiny_model_path: Path, tiny_gguf_path: Path) -> dict[str, Any]:
    """The tiny model on each engine (the GGUF engine on its float32 GGUF)."""
    return {
        "mlx": load_engine("mlx", tiny_model_path, {"prompt_cache_entries": 0}),
        "torch": load_engine("torch", tiny_model_path),
        "gguf": load_engine("gguf", tiny_gguf_path),
    }


def run(engine: Any, params: GenerationParams) -> list[Sampled]:
    ids = ChatTemplate(engine.tokenizer).encode(PROMPT)
    return [s for s in engine.token_stream(ids, params, lambda: False) if s is not PAUSE]


def tokens(engine: Any, params: GenerationParams) -> list[int]:
    return [s.token for s in run(engine, params)]


def test_greedy_tokens_and_logprobs_agree(engines: dict[str, Any]) -> None:
    results = {name: run(engine, GREEDY) for name, engine in engines.items()}
    reference = [s.token for s in results["torch"]]
    assert len(reference) == GREEDY.max_tokens
    for name, sampled in results.items():
        assert [s.token for s in sampled] == reference, name
        for a, b in zip(sampled, results["torch"], strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-3), name
            assert [t for t, _ in a.top] == [t for t, _ in b.top], name


@pytest.mark.parametrize("seed", [1, 7, 2026])
def test_a_seed_draws_the_same_tokens_on_torch_and_gguf(engines: dict[str, Any], seed: int) -> None:
    params = replace(SEEDED, seed=seed)
    assert tokens(engines["torch"], params) == tokens(engines["gguf"], params)


def test_every_engine_repeats_a_seed_and_moves_with_it(engines: dict[str, Any]) -> None:
    for name, engine in engines.items():
        first = tokens(engine, replace(SEEDED, seed=3))
        assert tokens(engine, replace(SEEDED, seed=3)) == first, name
        others = {tuple(tokens(engine, replace(SEEDED, seed=s))) for s in (4, 5, 6)}
        assert others - {tuple(first)}, name
