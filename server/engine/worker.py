"""One generation thread per engine, fed FIFO, bridged to asyncio.

All model work for an engine runs on its worker thread (MLX streams and torch
caches are not shared across threads). A consumer that stops listening, e.g. a
client that disconnects, sets the job's cancel flag; the producer checks it
between tokens, so generation stops within a token or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
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


class GenerationWorker:
    """Runs jobs one at a time, in submission order, on a dedicated thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pomar-{name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a job is being produced."""
        return self._busy.is_set()

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
        self, produce: Callable[[Callable[[], bool]], Iterator[T]]
    ) -> AsyncIterator[T]:
        """Queue `produce(should_stop)` and yield its items as the worker makes them.

        Leaving the loop early (break, exception, task cancellation) cancels the job.
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

    def close(self) -> None:
        """Stop the thread after the jobs already queued."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancel.is_set():
                continue  # the client left while the job waited in the queue
            self._busy.set()
            try:
                for item in job.produce(job.cancel.is_set):
                    job.push((_ITEM, item))
                    if job.cancel.is_set():
                        break
                job.push((_DONE, None))
            except Exception as exc:  # handed to the awaiting request, not lost
                log.exception("generation failed")
                job.push((_ERROR, exc))
            finally:
                self._busy.clear()


def _threadsafe(
    loop: asyncio.AbstractEventLoop, put: Callable[[tuple[str, Any]], None]
) -> Callable[[tuple[str, Any]], None]:
    """Wrap `put` so the worker thread can call it; drop messages once the loop is gone."""

    def push(message: tuple[str, Any]) -> None:
        # a closed event loop raises: nobody is listening any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(put, message)

    return push
