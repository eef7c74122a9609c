"""A worker whose streams advance on the event loop: for an engine whose tokens come
from elsewhere (an engine runner), so a stream never blocks waiting for them.

`GenerationWorker` advances every stream on its own thread: for an engine in a runner
process each token then wakes three threads of the server (the reader of the runner's
socket, the worker, the event loop), and on a 2-core machine every wake-up is taken from
the cores llama.cpp's threads hold (docs/benchmarks.md measures what that costs one
stream). Here the same producers (`stream_chunks` and the services' choice loops) are
advanced by the consuming task itself: the engine yields `PAUSE` instead of waiting and
marks the job starved (`starve`), the task then sleeps until the engine's reader calls
the job's waker (`loop_waker`). A token wakes the reader and the event loop, no more.

A producer that must block (it calls the engine and waits for the answer, e.g. prompt
scoring) asks for the thread: `stream(produce, blocking=True)`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from server.engine.worker import GenerationWorker, close_producer, job_context, job_state

log = logging.getLogger(__name__)

T = TypeVar("T")

_WAKER, _STARVED, _NOTHING_AFTER = "loop_waker", "loop_starved", "loop_nothing_after"


def loop_waker() -> Callable[[], None] | None:
    """The current job's waker when it advances on the event loop (call it from any
    thread when the job has something new); None on a worker thread."""
    waker: Callable[[], None] | None = job_state().get(_WAKER)
    return waker


def starve() -> None:
    """Say that the current job's next item is not here yet: the `PAUSE` it yields now
    is not passed on, and the job sleeps until its waker is called."""
    job_state()[_STARVED] = True


def nothing_after(nothing: bool = True) -> None:
    """Say that the engine has nothing more for the current job after the item it yields
    now: the job then waits for its waker before it is advanced again, rather than pass
    through its producers only to find that out (and `starve`), once a token. The engine
    takes it back (`nothing_after(False)`) when it is resumed or closed, so a producer
    that goes on by itself after that item (its last chunk) is not kept waiting."""
    if nothing:
        job_state()[_NOTHING_AFTER] = True
    else:
        job_state().pop(_NOTHING_AFTER, None)


class LoopWorker(GenerationWorker):
    """`GenerationWorker` whose `stream` runs on the event loop (see the module doc);
    `call`, `submit` and blocking streams keep the worker thread."""

    def __init__(self, name: str, concurrency: int = 1) -> None:
        super().__init__(name, concurrency)
        self._active = 0  # streams admitted on the loop
        self._admission: deque[asyncio.Future[None]] = deque()

    @property
    def busy(self) -> bool:
        return super().busy or self._active > 0

    @property
    def queued(self) -> int:
        return super().queued + len(self._admission)

    @property
    def running(self) -> int:
        return super().running + self._active

    async def stream(
        self, produce: Callable[[Callable[[], bool]], Iterator[T]], *, blocking: bool = False
    ) -> AsyncIterator[T]:
        """Advance `produce(should_stop)` on this task, as its items come (at most
        `concurrency` streams at once, the others waiting first come first served);
        `blocking`: on the worker thread instead. Leaving early cancels it."""
        if blocking:
            async for item in super().stream(produce):
                yield item
            return
        await self._admit()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        cancel = threading.Event()
        state: dict[str, Any] = {_WAKER: _waker(loop, wake)}
        items: Iterator[T] | None = None
        try:
            items = iter(produce(cancel.is_set))
            while True:
                if state.pop(_NOTHING_AFTER, False):
                    await wake.wait()  # set by a token since the last clear, or the next
                wake.clear()  # before the engine looks: a token after that wakes us
                with job_context(state):
                    try:
                        item = next(items)
                    except StopIteration:
                        return
                    except Exception:
                        log.exception("generation failed")
                        raise
                if state.pop(_STARVED, False):
                    await wake.wait()
                    continue
                yield item
        finally:
            cancel.set()
            if items is not None:
                with job_context(state):
                    close_producer(items)
            self._release()

    async def _admit(self) -> None:
        if self._active < self.concurrency and not self._admission:
            self._active += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._admission.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # admitted just as the request went away
            elif turn in self._admission:
                self._admission.remove(turn)
            raise

    def _release(self) -> None:
        self._active -= 1
        while self._admission and self._active < self.concurrency:
            turn = self._admission.popleft()
            if not turn.done():
                self._active += 1
                turn.set_result(None)


def _waker(loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> Callable[[], None]:
    """Sets `wake` from any thread: directly on the loop's own (a runner's socket read by
    the loop), else through `call_soon_threadsafe`, which wakes the loop."""
    own = threading.get_ident()

    def waker() -> None:
        if threading.get_ident() == own:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    return waker
