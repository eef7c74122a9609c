"""Concurrent token streams through the real worker, as the services run them.

Shared by the batching suites of the MLX and the GGUF engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

from server.engine.base import Engine, GenerationParams
from server.engine.generation import Chunk, stream_chunks
from server.engine.worker import GenerationWorker

Producer = Callable[[Callable[[], bool]], Iterator[Chunk]]


def job(
    engine: Engine, prompt: list[int], params: GenerationParams, adapter: Path | None = None
) -> Producer:
    """A worker job that streams one completion of `prompt`."""

    def produce(should_stop: Callable[[], bool]) -> Iterator[Chunk]:
        # as the services' producers do: the adapter is chosen right before the stream
        engine.activate_adapter(adapter)
        yield from stream_chunks(engine, prompt, params, should_stop)

    return produce


async def collect(worker: GenerationWorker, producer: Producer) -> list[Chunk]:
    """Every chunk the job streams."""
    return [chunk async for chunk in worker.stream(producer)]


def tokens_of(chunks: list[Chunk]) -> list[int]:
    """The sampled token ids behind the chunks (the params must ask for logprobs)."""
    return [s.token for c in chunks for s in c.tokens]


async def run_batch(
    engine: Engine, jobs: list[tuple[list[int], GenerationParams]]
) -> list[list[Chunk]]:
    """The jobs submitted together to one worker interleaving as the engine allows."""
    worker = GenerationWorker("batch", concurrency=engine.max_concurrency)
    try:
        runs = [collect(worker, job(engine, p, params)) for p, params in jobs]
        return list(await asyncio.gather(*runs))
    finally:
        worker.close()
