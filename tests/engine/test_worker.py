"""The generation worker: FIFO on one thread, errors handed back, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from server.engine.worker import GenerationWorker


async def test_jobs_run_in_order_on_one_thread() -> None:
    worker = GenerationWorker("t")
    threads: set[int] = set()
    order: list[int] = []

    def job(i: int) -> Callable[[Callable[[], bool]], Iterator[int]]:
        def produce(_stop: Callable[[], bool]) -> Iterator[int]:
            threads.add(threading.get_ident())
            order.append(i)
            yield i

        return produce

    async def run(i: int) -> list[int]:
        return [x async for x in worker.stream(job(i))]

    results = await asyncio.gather(*[run(i) for i in range(5)])
    assert results == [[i] for i in range(5)]
    assert order == list(range(5))
    assert len(threads) == 1 and threading.get_ident() not in threads
    worker.close()


async def test_error_reaches_the_caller() -> None:
    worker = GenerationWorker("t")

    def broken(_stop: Callable[[], bool]) -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    got: list[int] = []
    with pytest.raises(ValueError, match="boom"):
        async for x in worker.stream(broken):
            got.append(x)
    assert got == [1]
    # the worker survives and serves the next job
    assert await worker.call(lambda: 42) == 42
    worker.close()


async def test_leaving_the_stream_cancels_the_job() -> None:
    worker = GenerationWorker("t")
    produced = 0

    def endless(should_stop: Callable[[], bool]) -> Iterator[int]:
        nonlocal produced
        while not should_stop():
            produced += 1
            time.sleep(0.002)
            yield produced

    async for x in worker.stream(endless):
        if x >= 3:
            break
    await asyncio.sleep(0.1)
    stopped_at = produced
    await asyncio.sleep(0.1)
    assert produced == stopped_at  # nothing more is produced after the consumer left
    assert not worker.busy
    worker.close()
