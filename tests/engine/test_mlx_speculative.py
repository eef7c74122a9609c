"""Prompt-lookup speculative decoding on the MLX engine: the same output as the batches.

On the tiny float32 model. The tiny model's weights are random, so it repeats itself
only when pushed: a logit_bias on the tokens of " one two three" keeps greedy output
among them (which of them the model still decides), and lookup then has matches.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server.engine.base import GenerationParams, Sampled
from server.engine.generation import complete, interleave, stream_chunks
from server.engine.mlx.backend import MLXEngine
from server.engine.mlx.speculative import Speculator

GREEDY = GenerationParams(max_tokens=48, temperature=0.0, top_logprobs=3)
SEEDED = replace(GREEDY, temperature=0.9, top_p=0.95, seed=7)
NEVER = lambda: False  # noqa: E731
TEXTS = [
    "one two three one two three one two",
    "The cat sat on the mat. The cat sat on the",
    "1 2 3 4 5 1 2 3 4 5 1 2 3",
]


@pytest.fixture(scope="module")
def plain(tiny_model_path: Path) -> MLXEngine:
    return MLXEngine(tiny_model_path, max_batch_size=4, prompt_cache_entries=0)


@pytest.fixture(scope="module")
def drafting(tiny_model_path: Path) -> MLXEngine:
    return MLXEngine(tiny_model_path, max_batch_size=4, prompt_cache_entries=0, draft_tokens=8)


def encode(engine: MLXEngine, text: str) -> list[int]:
    return list(engine.tokenizer.encode(text, add_special_tokens=False))


def repeating(engine: MLXEngine, params: GenerationParams) -> GenerationParams:
    """`params` with the tokens of " one two three" favoured over all others."""
    return replace(params, logit_bias={t: 30.0 for t in encode(engine, " one two three")})


def ids_of(tokens: tuple[Sampled, ...]) -> list[int]:
    return [s.token for s in tokens]


def assert_same_logprobs(got: tuple[Sampled, ...], want: tuple[Sampled, ...]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert [i for i, _ in g.top] == [i for i, _ in w.top]
        assert [v for _, v in g.top] == pytest.approx([v for _, v in w.top], abs=1e-4)


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_the_output_is_the_same_with_and_without_drafts(
    plain: MLXEngine, drafting: MLXEngine, params: GenerationParams
) -> None:
    before = drafting.stats()
    for text in TEXTS:
        ids = encode(plain, text)
        for case in (params, repeating(plain, params)):
            want = complete(plain, ids, case, NEVER)
            got = complete(drafting, ids, case, NEVER)
            assert ids_of(got.tokens) == ids_of(want.tokens), text
            assert got.text == want.text and got.finish_reason == want.finish_reason
            assert_same_logprobs(got.tokens, want.tokens)
    after = drafting.stats()
    drafted = after["drafted_tokens"] - before["drafted_tokens"]
    accepted = after["accepted_tokens"] - before["accepted_tokens"]
    assert drafted > 0 and accepted > 0
    assert drafting.open_sequences == 0


def test_a_forced_repetition_takes_few_forwards(
    plain: MLXEngine, drafting: MLXEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = encode(plain, "one two three one two three one two")
    forced = encode(plain, " three")[-1]
    params = replace(GREEDY, max_tokens=40, logit_bias={forced: 100.0})
    steps: list[int] = []
    original = Speculator.forward

    def spy(self: Speculator, adapter: str, tokens: list[int], cache: list[Any]) -> Any:
        steps.append(len(tokens))
        return original(self, adapter, tokens, cache)

    monkeypatch.setattr(Speculator, "forward", spy)
    before = drafting.stats()
    got = complete(drafting, ids, params, NEVER)
    assert ids_of(got.tokens) == [forced] * 40
    # drafts double while confirmed (2, 4, 8, 8...): 40 tokens in 9 forwards
    assert drafting.stats()["accepted_tokens"] - before["accepted_tokens"] >= 20
    assert len(steps) < 12 and max(steps) == 9


def test_grammar_and_penalties_see_every_token_in_order(
    plain: MLXEngine, drafting: MLXEngine
) -> None:
    """The processors learn each sampled token from the row after it, drafted or not: a
    grammar that missed one would reject the output or change it."""
    from server.engine.constraints import compiler_for, json_schema_grammar

    words = {"type": "array", "items": {"enum": ["one", "two", "three"]}, "minItems": 10}
    schema = {"type": "object", "properties": {"words": words}, "required": ["words"]}
    compiler = compiler_for(plain.tokenizer, frozenset(plain.eos_token_ids), "response_format")
    factory = compiler.compile(json_schema_grammar(schema, strict=True))
    ids = encode(plain, 'Answer in JSON: {"words": ["one", "two", "three", "one", "two", "three"')
    cases = [
        replace(GREEDY, max_tokens=64, constraint=factory),
        replace(SEEDED, max_tokens=64, constraint=factory),
        replace(repeating(plain, GREEDY), presence_penalty=0.5, frequency_penalty=0.3),
    ]
    for params in cases:
        before = drafting.stats()
        want = complete(plain, ids, params, NEVER)
        got = complete(drafting, ids, params, NEVER)
        assert ids_of(got.tokens) == ids_of(want.tokens)
        assert_same_logprobs(got.tokens, want.tokens)
        assert drafting.stats()["accepted_tokens"] > before["accepted_tokens"]
        if params.constraint is not None:
            assert got.finish_reason == "stop"
            assert len(json.loads(got.text)["words"]) >= 10


def test_max_tokens_is_exact(plain: MLXEngine, drafting: MLXEngine) -> None:
    ids = encode(plain, "one two three one two three one two")
    forced = encode(plain, " three")[-1]
    for n in (1, 2, 3, 5, 9, 17):
        params = replace(GREEDY, max_tokens=n, logit_bias={forced: 100.0})
        # the engine's own stream stops there too, not only the caller
        streamed = list(drafting.token_stream(ids, params, NEVER))
        assert ids_of(tuple(streamed)) == [forced] * n
        assert complete(drafting, ids, params, NEVER).completion_tokens == n
    assert drafting.open_sequences == 0


def test_interleaved_streams_keep_their_own_caches(plain: MLXEngine, drafting: MLXEngine) -> None:
    prompts = [encode(plain, t) for t in [*TEXTS, "hello there, friend"]]
    params = repeating(plain, replace(GREEDY, max_tokens=24))
    want = [ids_of(complete(plain, p, params, NEVER).tokens) for p in prompts]
    streams = [stream_chunks(drafting, p, params, NEVER) for p in prompts]
    got: list[list[int]] = [[] for _ in prompts]
    for index, chunk in interleave(streams):
        got[index].extend(s.token for s in chunk.tokens)
    assert got == want
    assert drafting.open_sequences == 0


def test_the_prompt_cache_still_serves(tiny_model_path: Path, plain: MLXEngine) -> None:
    engine = MLXEngine(tiny_model_path, max_batch_size=4, draft_tokens=8)
    ids = encode(engine, TEXTS[0])
    params = repeating(engine, GREEDY)
    want = complete(plain, ids, params, NEVER)
    first = complete(engine, ids, params, NEVER)
    second = complete(engine, ids, params, NEVER)
    assert first.cached_tokens == 0
    assert second.cached_tokens == len(ids) - 1  # all but the last token, read again
    assert ids_of(first.tokens) == ids_of(second.tokens) == ids_of(want.tokens)
    assert_same_logprobs(second.tokens, want.tokens)
    # a stream cancelled midway leaves its cache too: the next turn reads only its rest
    made = 0

    def stop() -> bool:
        return made >= 5

    other = encode(engine, TEXTS[1])
    stream = engine.token_stream(other, params, stop)
    kept = []
    for sampled in stream:
        kept.append(sampled.token)
        made += 1
    assert len(kept) == 5 and engine.open_sequences == 0
    follow = complete(engine, [*other, *kept], params, NEVER)
    assert follow.cached_tokens == len(other) + len(kept) - 1
    expected = complete(plain, [*other, *kept], params, NEVER)
    assert ids_of(follow.tokens) == ids_of(expected.tokens)


def test_load_engine_passes_draft_tokens(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.engine.mlx import backend
    from server.models.loading import load_engine

    options = {"max_batch_size": 2, "draft_tokens": 4}
    engine = load_engine("mlx", tiny_model_path, options)
    assert engine.stats()["drafted_tokens"] == 0
    # a draft model drafts on the GGUF engine alone: MLX then decodes plainly
    other = load_engine("mlx", tiny_model_path, options, draft=Path("x"))
    assert "drafted_tokens" not in other.stats()
    # a cache that cannot drop refused drafts (rotating, recurrent): the batches decode
    monkeypatch.setattr(backend, "can_speculate", lambda model: False)
    fallback = load_engine("mlx", tiny_model_path, options)
    assert "drafted_tokens" not in fallback.stats()
    ids = list(fallback.tokenizer.encode(TEXTS[0], add_special_tokens=False))
    assert complete(fallback, ids, GREEDY, NEVER).completion_tokens > 0


def test_a_rotating_cache_does_not_speculate(tiny_model_path: Path) -> None:
    from mlx_lm.models.cache import RotatingKVCache

    from server.engine.mlx.speculative import can_speculate

    engine = MLXEngine(tiny_model_path, max_batch_size=1)
    assert can_speculate(engine.model)

    class Sliding:
        layers = engine.model.layers

        def make_cache(self) -> list[RotatingKVCache]:
            return [RotatingKVCache(max_size=64) for _ in self.layers]

    assert not can_speculate(Sliding())


async def test_each_stream_decodes_with_its_own_adapter(
    tiny_model_path: Path,
    plain: MLXEngine,
    drafting: MLXEngine,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Streams of the base and of an adapter interleave; each forward switches to its own."""
    import asyncio

    from server.engine.worker import GenerationWorker
    from tests.engine.batch_jobs import collect, job, tokens_of
    from tests.engine.test_adapters import random_mlx_adapter

    adapter = random_mlx_adapter(tiny_model_path, tmp_path_factory.mktemp("lora") / "a", seed=1)
    first, second = (encode(plain, t) for t in TEXTS[:2])
    params = repeating(plain, replace(GREEDY, max_tokens=24))
    cases = [(first, None), (second, adapter), (first, adapter)]

    async def outputs(engine: MLXEngine) -> list[list[int]]:
        worker = GenerationWorker("speculative", concurrency=engine.max_concurrency)
        try:
            runs = [collect(worker, job(engine, p, params, a)) for p, a in cases]
            return [tokens_of(chunks) for chunks in await asyncio.gather(*runs)]
        finally:
            worker.close()

    want = await outputs(plain)
    assert want[0] != want[2]  # the adapter does change the output
    assert await outputs(drafting) == want
