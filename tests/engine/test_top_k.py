"""`top_k` in the one sampler (numpy, for torch and GGUF) and the MLX sampler, the stop
string a completion reports when one ended it (the Messages API's `stop_sequence`), and
the one sampler's logit biases and penalties."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.engine.base import PAUSE, GenerationParams
from server.engine.generation import StopMatcher
from server.engine.sampling import sample
from server.engine.templates import ChatTemplate
from server.models.loading import load_engine

SCORES = np.log(np.array([0.05, 0.3, 0.1, 0.25, 0.2, 0.1], dtype=np.float32))
BEST_3 = {1, 3, 4}


def draws(params: GenerationParams, n: int = 400) -> set[int]:
    rng = np.random.default_rng(0)
    return {sample(SCORES.copy(), params, rng) for _ in range(n)}


def test_numpy_top_k_draws_among_the_k_best_only() -> None:
    assert draws(GenerationParams(temperature=1.0)) == set(range(6))
    assert draws(GenerationParams(temperature=1.0, top_k=1)) == {1}
    assert draws(GenerationParams(temperature=1.0, top_k=3)) == BEST_3
    # 0 and a k as large as the vocabulary are no limit
    assert draws(GenerationParams(temperature=1.0, top_k=0)) == set(range(6))
    assert draws(GenerationParams(temperature=1.0, top_k=6)) == set(range(6))


def test_numpy_top_k_after_top_p_keeps_the_smaller_set() -> None:
    # the nucleus of 0.5 is {1, 3}: top_k=3 does not widen it, top_k=1 narrows it
    assert draws(GenerationParams(temperature=1.0, top_p=0.5, top_k=3)) == {1, 3}
    assert draws(GenerationParams(temperature=1.0, top_p=0.5, top_k=1)) == {1}
    assert draws(GenerationParams(temperature=1.0, top_p=0.9, top_k=3)) == BEST_3


def test_mlx_sampler_top_k() -> None:
    mx = pytest.importorskip("mlx.core")
    from server.engine.mlx.sampling import make_sampler

    logprobs = mx.array(SCORES)[None]
    for top_k, expected in [(1, {1}), (3, BEST_3), (0, set(range(6)))]:
        sampler = make_sampler(mx, 1.0, 1.0, seed=5, top_k=top_k)
        seen = {int(sampler(logprobs).item()) for _ in range(300)}
        assert seen == expected, top_k


def test_the_matched_stop_string_is_reported() -> None:
    matcher = StopMatcher(("END", "ST"))
    assert matcher.feed("abc S") == ("abc ", False) and matcher.matched is None
    assert matcher.feed("TOP") == ("", True)
    assert matcher.matched == "ST"


@pytest.fixture(scope="module")
def engines(tiny_model_path: Path) -> dict[str, Any]:
    return {
        "mlx": load_engine("mlx", tiny_model_path, {"prompt_cache_entries": 0}),
        "torch": load_engine("torch", tiny_model_path),
    }


def test_top_k_1_is_greedy_on_every_engine(engines: dict[str, Any]) -> None:
    greedy = GenerationParams(max_tokens=8, temperature=0.0)
    for name, engine in engines.items():
        ids = ChatTemplate(engine.tokenizer).encode([{"role": "user", "content": "Hello"}])

        def run(params: GenerationParams, engine: Any = engine, ids: list[int] = ids) -> list[int]:
            stream = engine.token_stream(ids, params, lambda: False)
            return [s.token for s in stream if s is not PAUSE]

        expected = run(greedy)
        for seed in (1, 2):
            hot = replace(greedy, temperature=1.5, top_k=1, seed=seed)
            assert run(hot) == expected, name


@pytest.mark.parametrize("biases", [2, 9, 40])  # id by id up to 8, numpy's indexing above
@pytest.mark.parametrize("penalty", [0.0, 0.7])
def test_biases_and_penalties_adjust_the_scores_as_written(biases: int, penalty: float) -> None:
    from server.engine.sampling import Adjuster

    rng = np.random.default_rng(biases)
    vocab = 300
    bias = {int(t): float(rng.uniform(-5, 5)) for t in rng.choice(vocab, biases, replace=False)}
    params = GenerationParams(
        logit_bias=bias, presence_penalty=penalty, frequency_penalty=penalty / 2
    )
    adjust = Adjuster(params, vocab)
    seen = [3, 3, 17]
    for token in seen:
        adjust.count(token)
    logits = rng.normal(size=vocab).astype(np.float32)
    want = logits.copy()
    for token, b in bias.items():
        want[token] += np.float32(b)
    counts = np.bincount(seen, minlength=vocab).astype(np.float32)
    want -= np.float32(penalty / 2) * counts
    want -= np.float32(penalty) * (counts > 0).astype(np.float32)
    got = adjust(logits.copy())
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
