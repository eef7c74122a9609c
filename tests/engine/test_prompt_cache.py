"""The MLX engine's prompt (prefix) cache: same greedy output, fewer prompt tokens run."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine.base import GenerationParams
from server.engine.generation import Completion, complete
from server.engine.mlx.backend import MLXEngine
from server.engine.templates import ChatTemplate

GREEDY = GenerationParams(max_tokens=20, temperature=0.0, top_logprobs=0)
SYSTEM = "You are a terse assistant. " * 12


@pytest.fixture(scope="module")
def cached(tiny_model_path: Path) -> MLXEngine:
    return MLXEngine(tiny_model_path, prompt_cache_entries=8)


@pytest.fixture(scope="module")
def uncached(tiny_model_path: Path) -> MLXEngine:
    return MLXEngine(tiny_model_path, prompt_cache_entries=0)


def run(engine: MLXEngine, prompt: list[int], params: GenerationParams = GREEDY) -> Completion:
    return complete(engine, prompt, params, lambda: False)


def tokens(completion: Completion) -> list[int]:
    return [s.token for s in completion.tokens]


def test_second_turn_reuses_the_first_and_answers_the_same(
    cached: MLXEngine, uncached: MLXEngine
) -> None:
    template = ChatTemplate(cached.tokenizer)
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi there"}]
    prompt1 = template.encode(turn1)
    first = run(cached, prompt1)
    assert first.cached_tokens == 0
    assert tokens(first) == tokens(run(uncached, prompt1))

    turn2 = [
        *turn1,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And then?"},
    ]
    prompt2 = template.encode(turn2)
    second = run(cached, prompt2)
    cold = run(uncached, prompt2)
    assert tokens(second) == tokens(cold)
    assert second.text == cold.text
    # the whole first prompt (and more) came from the cache; the rest ran
    assert len(prompt1) <= second.cached_tokens < len(prompt2)
    assert cold.cached_tokens == 0


def test_an_identical_prompt_reruns_only_its_last_token(
    cached: MLXEngine, uncached: MLXEngine
) -> None:
    prompt = list(cached.tokenizer.encode(SYSTEM + "Count: 1 2 3", add_special_tokens=False))
    first = run(cached, prompt)
    again = run(cached, prompt)
    assert again.cached_tokens == len(prompt) - 1
    assert tokens(again) == tokens(first) == tokens(run(uncached, prompt))


def test_a_shared_prefix_with_a_different_ending_is_trimmed(
    cached: MLXEngine, uncached: MLXEngine
) -> None:
    encode = cached.tokenizer.encode
    a = list(encode(SYSTEM + "The sky is blue", add_special_tokens=False))
    b = list(encode(SYSTEM + "Grass is green", add_special_tokens=False))
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    run(cached, a)
    hit = run(cached, b)
    assert hit.cached_tokens == common
    assert tokens(hit) == tokens(run(uncached, b))


def test_the_cache_is_bounded(tiny_model_path: Path) -> None:
    engine = MLXEngine(tiny_model_path, prompt_cache_entries=2)
    for word in ["alpha", "bravo", "charlie", "delta"]:
        run(engine, list(engine.tokenizer.encode(f"{word} {word} {word}")))
    assert len(engine.prompt_cache) <= 2
    tiny = MLXEngine(tiny_model_path, prompt_cache_bytes=1)
    run(tiny, list(tiny.tokenizer.encode("alpha bravo")))
    assert tiny.prompt_cache.nbytes <= 1
