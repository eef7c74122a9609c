"""Continuous batching on the MLX engine: concurrent streams decode together, each intact.

The streams run through the real worker (interleaving jobs) and the real engine on
the tiny model; the reference is mlx-lm's own unbatched `generate_step`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from server.engine.base import GenerationParams
from server.engine.generation import Chunk, interleave, stream_chunks
from server.engine.mlx.backend import MLXEngine
from server.engine.worker import GenerationWorker
from tests.engine.batch_jobs import Producer, collect, job, run_batch, tokens_of

GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_logprobs=0)
PROMPTS = ["The cat sat on", "Once upon a time", "1 2 3 4 5", "hello there, friend"]


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> MLXEngine:
    return MLXEngine(tiny_model_path, max_batch_size=4, prompt_cache_entries=0)


def encode(engine: MLXEngine, text: str) -> list[int]:
    return list(engine.tokenizer.encode(text, add_special_tokens=False))


def reference(engine: MLXEngine, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens from mlx-lm's unbatched generate_step, up to eos or the limit."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    out: list[int] = []
    for token, _ in generate_step(mx.array(prompt), engine.model, max_tokens=max_tokens):
        if int(token) in engine.eos_token_ids:
            break
        out.append(int(token))
    return out


async def test_batched_greedy_equals_unbatched(engine: MLXEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    limits = [24, 9, 17, 5]  # they leave the batch at different steps
    expected = [reference(engine, p, n) for p, n in zip(prompts, limits, strict=True)]
    jobs = [(p, replace(GREEDY, max_tokens=n)) for p, n in zip(prompts, limits, strict=True)]
    results = await run_batch(engine, jobs)
    assert [tokens_of(r) for r in results] == expected
    assert engine.largest_batch == 4  # they did decode together
    for chunks, n, want in zip(results, limits, expected, strict=True):
        assert chunks[-1].completion_tokens == len(want)
        assert chunks[-1].finish_reason == ("length" if len(want) == n else "stop")


async def test_stop_strings_and_max_tokens_per_request(engine: MLXEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    texts = [engine.tokenizer.decode(reference(engine, p, 24)) for p in prompts]
    # a stop string from the middle of request 0's own text; a short limit for request 1
    stop = texts[0][len(texts[0]) // 2 :][:3]
    jobs = [
        (prompts[0], replace(GREEDY, stop=(stop,))),
        (prompts[1], replace(GREEDY, max_tokens=3)),
        (prompts[2], GREEDY),
        (prompts[3], replace(GREEDY, stop=("\x00never",))),
    ]
    results = await run_batch(engine, jobs)
    text = ["".join(c.text for c in r) for r in results]
    assert text[0] == texts[0][: texts[0].index(stop)]
    assert results[0][-1].finish_reason == "stop"
    assert results[1][-1].completion_tokens == 3 and results[1][-1].finish_reason == "length"
    assert text[2] == texts[2] and text[3] == texts[3]


async def test_a_disconnect_leaves_the_others_intact(engine: MLXEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    expected = [reference(engine, p, 24) for p in prompts]
    worker = GenerationWorker("batch", concurrency=4)

    async def leave_early(producer: Producer) -> int:
        got = 0
        async for _chunk in worker.stream(producer):
            got += 1
            if got == 2:
                break  # the client disconnects
        return got

    try:
        runs = [collect(worker, job(engine, p, GREEDY)) for p in prompts[1:]]
        left, *rest = await asyncio.gather(leave_early(job(engine, prompts[0], GREEDY)), *runs)
    finally:
        worker.close()
    assert left == 2
    assert [tokens_of(r) for r in rest] == expected[1:]
    await asyncio.sleep(0.05)
    assert engine.open_sequences == 0  # the cancelled one left its batch too


async def test_seeds_are_reproducible_within_a_batch(engine: MLXEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    seeded = GenerationParams(max_tokens=16, temperature=1.0, seed=1234, top_logprobs=0)
    (alone,) = await run_batch(engine, [(prompts[0], seeded)])
    unseeded = replace(seeded, seed=None)
    together = await run_batch(
        engine, [(prompts[0], seeded)] + [(p, unseeded) for p in prompts[1:]]
    )
    assert tokens_of(together[0]) == tokens_of(alone)
    assert len(tokens_of(alone)) > 0


async def test_logit_bias_and_logprobs_stay_per_request(engine: MLXEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    forced = encode(engine, " cat")[-1]
    biased = replace(GREEDY, max_tokens=6, logit_bias={forced: 100.0}, top_logprobs=2)
    plain = replace(GREEDY, max_tokens=6)
    results = await run_batch(engine, [(prompts[0], biased), (prompts[1], plain)])
    assert tokens_of(results[0]) == [forced] * 6
    assert all(len(s.top) == 2 and s.top[0][0] == forced for c in results[0] for s in c.tokens)
    assert tokens_of(results[1]) == reference(engine, prompts[1], 6)


def random_adapter(base: Path, dest: Path) -> Path:
    """A LoRA adapter in mlx-lm's format with random, clearly non-zero weights."""
    import json

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(3)
    model = load(str(base))[0]
    params = {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
    linear_to_lora_layers(model, 2, params)
    weights = {
        k: mx.random.normal(v.shape) * 0.5
        for k, v in tree_flatten(model.trainable_parameters())
        if k.endswith(("lora_a", "lora_b"))
    }
    dest.mkdir(parents=True)
    mx.save_safetensors(str(dest / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": params}
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


async def test_requests_for_different_adapters_each_get_their_own(
    engine: MLXEngine, tiny_model_path: Path, tmp_path: Path
) -> None:
    adapter = random_adapter(tiny_model_path, tmp_path / "lora")
    prompts = [encode(engine, text) for text in PROMPTS]
    engine.activate_adapter(adapter)
    tuned = [reference(engine, p, 12) for p in prompts[:2]]
    engine.activate_adapter(None)
    bare = [reference(engine, p, 12) for p in prompts[:2]]
    assert tuned != bare
    params = replace(GREEDY, max_tokens=12)
    worker = GenerationWorker("batch", concurrency=4)
    try:
        runs = [
            collect(worker, job(engine, prompts[0], params, adapter)),
            collect(worker, job(engine, prompts[0], params)),
            collect(worker, job(engine, prompts[1], params, adapter)),
            collect(worker, job(engine, prompts[1], params)),
        ]
        results = await asyncio.gather(*runs)
    finally:
        worker.close()
    assert [tokens_of(r) for r in results] == [tuned[0], bare[0], tuned[1], bare[1]]


async def test_cached_and_cold_prompts_share_a_batch(tiny_model_path: Path) -> None:
    engine = MLXEngine(tiny_model_path, max_batch_size=4, prompt_cache_entries=8)
    prompts = [encode(engine, text * 3) for text in PROMPTS]
    expected = [reference(engine, p, 16) for p in prompts]
    params = replace(GREEDY, max_tokens=16)
    # prompts 0 and 1 leave caches of themselves (and their answers) behind
    await run_batch(engine, [(prompts[0], params), (prompts[1], params)])
    results = await run_batch(engine, [(p, params) for p in prompts])
    assert [tokens_of(r) for r in results] == expected
    cached = [r[-1].cached_tokens for r in results]
    assert cached[0] == len(prompts[0]) - 1 and cached[1] == len(prompts[1]) - 1
    assert cached[2:] == [0, 0]


async def test_adapters_stay_per_request_across_sequential_choices(
    engine: MLXEngine, tiny_model_path: Path, tmp_path: Path
) -> None:
    """The services' own producer (n choices one after another) on interleaved jobs."""
    from server.engine.templates import ChatTemplate
    from server.models.loading import LoadedModel
    from server.services.choices import choices_producer

    adapter = random_adapter(tiny_model_path, tmp_path / "lora")
    prompt = encode(engine, PROMPTS[2])
    engine.activate_adapter(adapter)
    tuned = reference(engine, prompt, 10)
    engine.activate_adapter(None)
    bare = reference(engine, prompt, 10)
    assert tuned != bare
    worker = GenerationWorker("batch", concurrency=4)
    template = ChatTemplate(engine.tokenizer)
    models = [
        LoadedModel("tuned", engine, worker, template, adapter=adapter),
        LoadedModel("bare", engine, worker, template),
    ]
    params = replace(GREEDY, max_tokens=10)

    async def choices(model: LoadedModel) -> list[list[int]]:
        out: list[list[int]] = [[], [], []]
        async for index, chunk in worker.stream(choices_producer(model, [prompt], params, 3)):
            out[index].extend(s.token for s in chunk.tokens)
        return out

    try:
        got = await asyncio.gather(*[choices(m) for m in models])
    finally:
        worker.close()
    assert got == [[tuned] * 3, [bare] * 3]


def test_the_choices_of_one_request_decode_together(tiny_model_path: Path) -> None:
    engine = MLXEngine(tiny_model_path, max_batch_size=4, prompt_cache_entries=0)
    prompt = encode(engine, PROMPTS[0])
    sampled = GenerationParams(max_tokens=12, temperature=1.0, top_logprobs=0)
    seeds = [11, 12, 13]
    alone = [
        tokens_of(list(stream_chunks(engine, prompt, replace(sampled, seed=s), lambda: False)))
        for s in seeds
    ]
    streams = [
        stream_chunks(engine, prompt, replace(sampled, seed=s), lambda: False) for s in seeds
    ]
    together: list[list[Chunk]] = [[], [], []]
    for index, chunk in interleave(streams):
        together[index].append(chunk)
    assert [tokens_of(c) for c in together] == alone
    assert engine.largest_batch == 3
    assert len({tuple(a) for a in alone}) > 1  # different seeds, different samples


async def test_worker_interleaves_up_to_its_concurrency() -> None:
    worker = GenerationWorker("t", concurrency=2)
    order: list[str] = []

    def producer(name: str) -> Callable[[Callable[[], bool]], Iterator[str]]:
        def produce(_stop: Callable[[], bool]) -> Iterator[str]:
            for i in range(3):
                order.append(f"{name}{i}")
                yield name

        return produce

    async def run(name: str) -> list[str]:
        return [x async for x in worker.stream(producer(name))]

    results = await asyncio.gather(run("a"), run("b"), run("c"))
    worker.close()
    assert results == [["a"] * 3, ["b"] * 3, ["c"] * 3]
    # a and b alternate; c waits for a free slot, then runs
    assert order[:6] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert order[6:] == ["c0", "c1", "c2"]
