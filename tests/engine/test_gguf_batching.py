"""Continuous batching on the GGUF engine: concurrent streams decode together, each intact.

The streams run through the real worker (interleaving jobs) and llama.cpp on the tiny
model's f32 GGUF; the reference is the same engine serving each prompt alone. (On a
quantized file llama.cpp's kernels round a batch of 8 rows differently from one row, so
there batched and lone greedy texts part after some tokens, as on llama-server; the f32
file keeps its logits within ~0.02 and its greedy tokens equal: docs/engines.md.)
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from server.engine.base import GenerationParams
from server.engine.generation import Chunk, stream_chunks
from server.engine.gguf.backend import GGUFEngine
from server.engine.gguf.rows import Rows
from server.engine.worker import GenerationWorker
from tests.engine.batch_jobs import Producer, collect, job, run_batch, tokens_of

GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_logprobs=0)
PROMPTS = ["The cat sat on", "Once upon a time", "1 2 3 4 5", "hello there, friend"]


@pytest.fixture(scope="module")
def engine(tiny_gguf_path: Path) -> GGUFEngine:
    return GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, max_batch_size=4)


def encode(engine: GGUFEngine, text: str) -> list[int]:
    return list(engine.tokenizer.encode(text, add_special_tokens=False))


async def alone(engine: GGUFEngine, prompt: list[int], params: GenerationParams) -> list[Chunk]:
    engine.clear_cache()
    (chunks,) = await run_batch(engine, [(prompt, params)])
    return chunks


async def test_batched_greedy_equals_unbatched(engine: GGUFEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    limits = [24, 9, 17, 5]  # they leave the batch at different steps
    jobs = [(p, replace(GREEDY, max_tokens=n)) for p, n in zip(prompts, limits, strict=True)]
    expected = [tokens_of(await alone(engine, p, q)) for p, q in jobs]
    engine.clear_cache()
    before = engine.largest_batch
    results = await run_batch(engine, jobs)
    assert [tokens_of(r) for r in results] == expected
    assert engine.largest_batch == 4 and before == 1  # they did decode together
    for chunks, n, want in zip(results, limits, expected, strict=True):
        assert chunks[-1].completion_tokens == len(want)
        assert chunks[-1].finish_reason == ("length" if len(want) == n else "stop")
    assert engine.open_sequences == 0


async def test_a_sequence_that_joins_mid_batch_answers_as_alone(engine: GGUFEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    expected = [tokens_of(await alone(engine, p, GREEDY)) for p in prompts]
    engine.clear_cache()
    worker = GenerationWorker("batch", concurrency=4)

    async def late(prompt: list[int], after: asyncio.Event) -> list[Chunk]:
        await after.wait()
        return await collect(worker, job(engine, prompt, GREEDY))

    started = asyncio.Event()

    async def first() -> list[Chunk]:
        chunks: list[Chunk] = []
        async for chunk in worker.stream(job(engine, prompts[0], GREEDY)):
            chunks.append(chunk)
            if len(tokens_of(chunks)) == 6:
                started.set()  # the others join a batch already decoding
        return chunks

    try:
        results = await asyncio.gather(first(), *[late(p, started) for p in prompts[1:]])
    finally:
        worker.close()
    assert [tokens_of(r) for r in results] == expected


async def test_seeded_sampling_is_the_same_batched_and_alone(engine: GGUFEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    seeded = GenerationParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, top_logprobs=0)
    expected = tokens_of(await alone(engine, prompts[0], seeded))
    engine.clear_cache()
    unseeded = replace(seeded, seed=None)
    together = await run_batch(
        engine, [(prompts[0], seeded)] + [(p, unseeded) for p in prompts[1:]]
    )
    assert tokens_of(together[0]) == expected and len(expected) == 16


async def test_stop_strings_limits_bias_and_logprobs_stay_per_request(engine: GGUFEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    texts = ["".join(c.text for c in await alone(engine, p, GREEDY)) for p in prompts]
    stop = texts[0][len(texts[0]) // 2 :][:3]
    forced = encode(engine, " cat")[-1]
    engine.clear_cache()
    jobs = [
        (prompts[0], replace(GREEDY, stop=(stop,))),
        (prompts[1], replace(GREEDY, max_tokens=3)),
        (prompts[2], replace(GREEDY, max_tokens=6, logit_bias={forced: 100.0}, top_logprobs=2)),
        (prompts[3], GREEDY),
    ]
    results = await run_batch(engine, jobs)
    text = ["".join(c.text for c in r) for r in results]
    assert text[0] == texts[0][: texts[0].index(stop)] and results[0][-1].finish_reason == "stop"
    assert results[1][-1].completion_tokens == 3 and results[1][-1].finish_reason == "length"
    assert tokens_of(results[2]) == [forced] * 6
    assert all(len(s.top) == 2 and s.top[0][0] == forced for c in results[2] for s in c.tokens)
    assert text[3] == texts[3]


async def test_a_disconnect_leaves_the_others_intact(engine: GGUFEngine) -> None:
    prompts = [encode(engine, text) for text in PROMPTS]
    expected = [tokens_of(await alone(engine, p, GREEDY)) for p in prompts]
    engine.clear_cache()
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
    assert engine.open_sequences == 0  # the cancelled one left its slot too


async def test_a_long_prompt_is_read_in_slices_between_the_others_steps(
    engine: GGUFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = encode(engine, PROMPTS[1])
    long = encode(engine, "apples and pears " * 200)  # ~800 tokens: several slices
    params = replace(GREEDY, max_tokens=20)
    expected_long = tokens_of(await alone(engine, long, params))
    expected_short = tokens_of(await alone(engine, short, params))
    engine.clear_cache()
    steps: list[int] = []  # rows per llama_decode
    original = Rows.decode

    def spy(self: Rows, ctx: object) -> int:
        steps.append(len(self))
        return original(self, ctx)

    monkeypatch.setattr(Rows, "decode", spy)
    worker = GenerationWorker("batch", concurrency=4)
    decoding = asyncio.Event()

    async def talker() -> list[Chunk]:
        chunks: list[Chunk] = []
        async for chunk in worker.stream(job(engine, short, params)):
            chunks.append(chunk)
            if chunk.tokens:
                decoding.set()
        return chunks

    async def reader() -> list[Chunk]:
        await decoding.wait()
        return await collect(worker, job(engine, long, params))

    try:
        got_short, got_long = await asyncio.gather(talker(), reader())
    finally:
        worker.close()
    assert tokens_of(got_short) == expected_short and tokens_of(got_long) == expected_long
    # the long prompt went in slices, each beside the short stream's one decode row
    sliced = [n for n in steps if n > 2]
    assert len(sliced) >= 3 and max(sliced) <= 257


async def test_a_prompt_reuses_a_prefix_another_slot_holds(engine: GGUFEngine) -> None:
    """A prefix cached in a busy slot is copied into the new request's slot."""
    base = encode(engine, "A long shared system prompt about orchards and apples. " * 8)
    first, second = base + encode(engine, " Question one?"), base + encode(engine, " Question two?")
    params = replace(GREEDY, max_tokens=20)
    expected = tokens_of(await alone(engine, second, params))
    engine.clear_cache()
    worker = GenerationWorker("batch", concurrency=4)
    started = asyncio.Event()

    async def holder() -> list[Chunk]:
        chunks: list[Chunk] = []
        async for chunk in worker.stream(job(engine, first, params)):
            chunks.append(chunk)
            started.set()
        return chunks

    async def joiner() -> list[Chunk]:
        await started.wait()  # `first` holds its slot, decoding, when this one arrives
        return await collect(worker, job(engine, second, params))

    try:
        _, got = await asyncio.gather(holder(), joiner())
    finally:
        worker.close()
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert got[-1].cached_tokens == shared
    assert tokens_of(got) == expected


async def test_sixteen_streams_on_eight_slots_all_finish(tiny_gguf_path: Path) -> None:
    """More streams than slots (the choices of one request share a job): the rest wait."""
    from server.engine.generation import interleave

    engine = GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, max_batch_size=8)
    prompts = [encode(engine, f"{PROMPTS[i % 4]} {i}") for i in range(16)]
    params = replace(GREEDY, max_tokens=12)
    expected = []
    for p in prompts:
        engine.clear_cache()
        expected.append(
            [s.token for c in stream_chunks(engine, p, params, lambda: False) for s in c.tokens]
        )
    engine.clear_cache()
    streams = [stream_chunks(engine, p, params, lambda: False) for p in prompts]
    got: list[list[int]] = [[] for _ in prompts]
    for index, chunk in interleave(streams):
        got[index].extend(s.token for s in chunk.tokens)
    assert got == expected
    assert engine.largest_batch == 8 and engine.open_sequences == 0
