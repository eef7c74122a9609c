"""One generation thread per engine, fed FIFO, bridged to asyncio.

All model work for an engine runs on its worker thread (MLX streams and torch
caches are not shared across threads). A consumer that stops listening, e.g. a
client that disconnects, sets the job's cancel flag; the producer checks it
between tokens, so generation stops within a token or two.

By default jobs run one at a time. With `concurrency` above 1 (an engine that
batches, see `Engine.max_concurrency`) up to that many jobs are active at once and
the thread advances them round-robin, one item each per round: their token streams
meet in the engine's batch, which decodes them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_ITEM, _DONE, _ERROR = "item", "done", "error"


@dataclass
class _Job(Generic[T]):
    produce: Callable[[Callable[[], bool]], Iterator[T]]
    push: Callable[[tuple[str, Any]], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    state: dict[str, Any] = field(default_factory=dict)


_local = threading.local()


def job_state() -> dict[str, Any]:
    """State private to the job this worker thread is advancing right now.

    Jobs interleave on one thread, so per-request engine settings (e.g. which adapter
    `activate_adapter` chose) must live here rather than on the shared engine. Outside
    any job (direct calls) it is one dict per thread.
    """
    state: dict[str, Any] | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = {}
    return state


@contextlib.contextmanager
def job_context(state: dict[str, Any]) -> Iterator[None]:
    """Make `state` this thread's `job_state()` for the block: a job advanced elsewhere
    than on a worker thread (the event loop, `server.engine.loop_worker`)."""
    previous = getattr(_local, "state", None)
    _local.state = state
    try:
        yield
    finally:
        _local.state = previous


class GenerationWorker:
    """Runs jobs in submission order on a dedicated thread, `concurrency` at a time."""

    def __init__(self, name: str, concurrency: int = 1) -> None:
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._busy = threading.Event()
        self._concurrency = max(1, concurrency)
        # jobs admitted but not yet started, and jobs being advanced (read by `/metrics`)
        self._waiting = self._running = 0
        self._thread = threading.Thread(target=self._run, name=f"pomar-{name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a job is being produced."""
        return self._busy.is_set()

    @property
    def queued(self) -> int:
        """Jobs waiting for the thread (approximate: read without a lock)."""
        return self._jobs.qsize() + self._waiting

    @property
    def running(self) -> int:
        """Jobs the thread is advancing now (at most `concurrency`)."""
        return self._running

    @property
    def concurrency(self) -> int:
        """How many jobs may be active at once (1: strictly one after another)."""
        return self._concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        # read by the thread before it admits each job: takes effect at the next one
        self._concurrency = max(1, value)

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run one plain function on the worker thread (e.g. loading weights)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def produce(_stop: Callable[[], bool]) -> Iterator[T]:
            yield fn()

        def push(message: tuple[str, Any]) -> None:
            kind, value = message
            if future.done():
                return
            if kind == _ITEM:
                future.set_result(value)
            elif kind == _ERROR:
                future.set_exception(value)

        self._jobs.put(_Job(produce, _threadsafe(loop, push)))
        return future

    async def stream(
        self, produce: Callable[[Callable[[], bool]], Iterator[T]], *, blocking: bool = False
    ) -> AsyncIterator[T]:
        """Queue `produce(should_stop)` and yield its items as the worker makes them.

        Leaving the loop early (break, exception, task cancellation) cancels the job.
        `blocking` (the producer waits on its engine, e.g. to score a prompt) changes
        nothing here: every job runs on the thread (see `LoopWorker`).
        """
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        job: _Job[T] = _Job(produce, _threadsafe(loop, inbox.put_nowait))
        self._jobs.put(job)
        try:
            while True:
                kind, value = await inbox.get()
                if kind == _ITEM:
                    yield value
                elif kind == _ERROR:
                    raise value
                else:
                    return
        finally:
            job.cancel.set()

    def submit(
        self,
        produce: Callable[[Callable[[], bool]], Iterator[Any]],
        push: Callable[[tuple[str, Any]], None],
    ) -> threading.Event:
        """Queue `produce(should_stop)` with no event loop: `push((kind, value))` gets each
        item ("item"), then "done" or "error", on the worker thread. Setting the returned
        event cancels it (an engine runner's requests, server.engine.runner)."""
        job: _Job[Any] = _Job(produce, push)
        self._jobs.put(job)
        return job.cancel

    def close(self) -> None:
        """Stop the thread after the jobs already queued."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after `close`)."""
        self._thread.join(timeout)

    def _run(self) -> None:
        active: list[tuple[_Job[Any], Iterator[Any]]] = []
        waiting: deque[_Job[Any]] = deque()
        closing = False
        while True:
            closing = self._take(waiting, block=not active and not waiting) or closing
            while waiting and len(active) < self._concurrency:
                job = waiting.popleft()
                if not job.cancel.is_set():  # else the client left while it waited
                    active.append((job, iter(job.produce(job.cancel.is_set))))
            self._waiting, self._running = len(waiting), len(active)
            if not active:
                if closing and not waiting:
                    return
                continue
            self._busy.set()
            for entry in list(active):
                if not self._advance(*entry):
                    active.remove(entry)
            self._running = len(active)
            if not active:
                self._busy.clear()

    def _take(self, waiting: deque[_Job[Any]], *, block: bool) -> bool:
        """Move queued jobs to `waiting` (waiting for one if `block`); True: close asked."""
        closing = False
        while True:
            try:
                job = self._jobs.get(block=block)
            except queue.Empty:
                return closing
            block = False
            if job is None:
                closing = True
            else:
                waiting.append(job)

    @staticmethod
    def _advance(job: _Job[Any], items: Iterator[Any]) -> bool:
        """Hand the job's next item over; False once the job is over."""
        _local.state = job.state
        try:
            item = next(items)
        except StopIteration:
            job.push((_DONE, None))
            return False
        except Exception as exc:  # handed to the awaiting request, not lost
            log.exception("generation failed")
            job.push((_ERROR, exc))
            return False
        job.push((_ITEM, item))
        if job.cancel.is_set():
            close_producer(items)
            job.push((_DONE, None))
            return False
        return True


def close_producer(items: Iterator[Any]) -> None:
    """Close a producer now, so it releases its engine state (e.g. its batch slot)."""
    close = getattr(items, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("closing a generation failed")


def _threadsafe(
    loop: asyncio.AbstractEventLoop, put: Callable[[tuple[str, Any]], None]
) -> Callable[[tuple[str, Any]], None]:
    """Wrap `put` so the worker thread can call it; drop messages once the loop is gone."""

    def push(message: tuple[str, Any]) -> None:
        # a closed event loop raises: nobody is listening any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(put, message)

    return push
