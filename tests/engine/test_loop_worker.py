"""`LoopWorker`: streams advanced on the event loop, woken by whoever feeds them.

The unit tests drive producers that follow the engine's side of the contract (take what
is there, else `starve()` and yield `PAUSE`) from a feeding thread; the last test runs a
runner's engine (`RemoteEngine`) through it, several streams at once, against the engine
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.engine.base import PAUSE, GenerationParams
from server.engine.generation import stream_chunks
from server.engine.loop_worker import LoopWorker, loop_waker, nothing_after, starve
from server.engine.runner.remote import RemoteEngine
from server.engine.worker import job_state
from server.errors import EngineError

#: greedy, with each chunk's tokens kept (`top_logprobs`)
GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_logprobs=0)
NEVER = lambda: False  # noqa: E731


class Feed:
    """Items handed over by another thread, the way a runner's reader hands tokens."""

    def __init__(self, *, says_nothing_after: bool = False) -> None:
        self.items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.waker: Callable[[], None] | None = None
        self.ready = threading.Event()  # the producer registered its waker
        self.closed = threading.Event()
        #: as a runner's token stream: it says so when nothing is queued behind an item
        self.says_nothing_after = says_nothing_after
        self.resumed = 0  # times the producer looked for an item

    def put(self, item: Any) -> None:
        self.items.put(item)
        assert self.waker is not None
        self.waker()

    def produce(self, should_stop: Callable[[], bool]) -> Iterator[Any]:
        self.waker = loop_waker()
        self.ready.set()
        try:
            while not should_stop():
                self.resumed += 1
                try:
                    item = self.items.get_nowait()
                except queue.Empty:
                    starve()
                    yield PAUSE
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                if not self.says_nothing_after:
                    yield item
                    continue
                nothing_after(self.items.empty())
                try:
                    yield item
                finally:
                    nothing_after(False)
        finally:
            self.closed.set()


def feed_later(feed: Feed, items: list[Any], gap: float = 0.01) -> threading.Thread:
    def run() -> None:
        assert feed.ready.wait(10)
        for item in items:
            threading.Event().wait(gap)
            feed.put(item)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_items_come_in_order_and_the_loop_runs_while_a_stream_waits() -> None:
    worker = LoopWorker("t")
    feed = Feed()
    feeder = feed_later(feed, [1, 2, 3, None], gap=0.05)
    ticks = 0

    async def tick() -> None:  # the event loop stays free while the stream starves
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.ensure_future(tick())
    try:
        got = [item async for item in worker.stream(feed.produce)]
    finally:
        ticker.cancel()
        feeder.join()
    assert got == [1, 2, 3]  # no PAUSE passed on
    assert ticks > 10
    assert feed.closed.is_set()
    assert (worker.running, worker.queued, worker.busy) == (0, 0, False)
    worker.close()


async def test_a_job_with_nothing_after_its_item_waits_for_its_waker_to_go_on() -> None:
    worker = LoopWorker("t")
    feed = Feed(says_nothing_after=True)
    feeder = feed_later(feed, [1, 2, 3, None], gap=0.1)
    got = [item async for item in worker.stream(feed.produce)]
    feeder.join()
    assert got == [1, 2, 3]
    # at most the first look, each item, the end: never resumed only to find nothing
    # there after an item (8 looks then, fewer only if the items came faster than read)
    assert feed.resumed <= 5
    worker.close()


async def test_leaving_early_closes_the_producer_and_sets_its_stop() -> None:
    worker = LoopWorker("t")
    feed = Feed()
    stops: list[Callable[[], bool]] = []

    def produce(should_stop: Callable[[], bool]) -> Iterator[Any]:
        stops.append(should_stop)
        yield from feed.produce(should_stop)

    feeder = feed_later(feed, [1, 2, 3])
    async with contextlib.aclosing(worker.stream(produce)) as items:  # as the SSE stream
        async for item in items:
            assert item == 1
            break
    feeder.join()
    assert feed.closed.is_set() and stops[0]()
    assert worker.running == 0
    worker.close()


async def test_an_error_reaches_the_consumer() -> None:
    worker = LoopWorker("t")
    feed = Feed()
    feeder = feed_later(feed, [1, EngineError("broken")])
    got = []
    with pytest.raises(EngineError, match="broken"):
        async for item in worker.stream(feed.produce):
            got.append(item)
    feeder.join()
    assert got == [1] and worker.running == 0
    worker.close()


async def test_streams_past_the_concurrency_wait_their_turn_in_order() -> None:
    worker = LoopWorker("t", concurrency=1)
    feeds = [Feed() for _ in range(3)]
    order: list[int] = []

    async def drain(i: int) -> list[Any]:
        out = []
        async for item in worker.stream(feeds[i].produce):
            order.append(i)
            out.append(item)
        return out

    tasks = [asyncio.ensure_future(drain(i)) for i in range(3)]
    for _ in range(200):
        if feeds[0].ready.is_set():
            break
        await asyncio.sleep(0.01)
    assert (worker.running, worker.queued) == (1, 2)
    assert not feeds[1].ready.is_set()  # not started: it waits for the first
    tasks[2].cancel()  # one leaves while it waits: the others still get their turn
    for i in (0, 1):
        feed_later(feeds[i], [i * 10, None]).join()
        assert await tasks[i] == [i * 10]
    assert order == [0, 1]
    assert (worker.running, worker.queued) == (0, 0)
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    worker.close()


async def test_each_stream_has_its_own_job_state_and_blocking_ones_use_the_thread() -> None:
    worker = LoopWorker("t", concurrency=2)
    seen: dict[str, Any] = {}

    def produce(name: str) -> Callable[[Callable[[], bool]], Iterator[Any]]:
        def run(_stop: Callable[[], bool]) -> Iterator[Any]:
            job_state()["name"] = name
            yield (job_state()["name"], threading.current_thread().name, loop_waker())

        return run

    async def one(name: str, blocking: bool) -> None:
        async for item in worker.stream(produce(name), blocking=blocking):
            seen[name] = item

    await asyncio.gather(one("a", False), one("b", False), one("c", True))
    main = threading.current_thread().name
    assert seen["a"][:2] == ("a", main) and seen["a"][2] is not None
    assert seen["b"][:2] == ("b", main)
    assert seen["c"][0] == "c" and seen["c"][1] != main and seen["c"][2] is None
    assert "name" not in job_state()  # the loop's own state is left as it was
    worker.close()


async def test_a_runners_streams_on_the_loop_equal_the_engine_alone(
    remote: RemoteEngine, alone: tuple[list[list[int]], list[list[int]]]
) -> None:
    prompts, want = alone
    worker = LoopWorker("tiny", concurrency=4)

    async def one(prompt: list[int]) -> list[int]:
        def produce(should_stop: Callable[[], bool]) -> Iterator[Any]:
            return stream_chunks(remote, prompt, GREEDY, should_stop)

        return [s.token async for chunk in worker.stream(produce) for s in chunk.tokens]

    for _ in range(2):
        streams = asyncio.gather(*(one(p) for p in prompts))
        assert await asyncio.wait_for(streams, 120) == want  # a lost wake-up hangs
    assert remote.stats()["largest_batch"] > 1  # they did decode together
    assert remote.crashed is None

    def scores(_stop: Callable[[], bool]) -> Iterator[Any]:
        yield remote.score(prompts[0], 1)

    # a call that waits for the runner would block the loop: refused there, fine on the thread
    with pytest.raises(EngineError, match="not from the event loop"):
        async for _ in worker.stream(scores):
            pass
    got = [item async for item in worker.stream(scores, blocking=True)]
    assert len(got[0]) == len(prompts[0]) - 1
    worker.close()
