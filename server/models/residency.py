"""Which models are resident: load on demand, a memory budget, LRU eviction, keep-alive.

A request may name any model the server knows: the one it started with, any model in the
store (`pomar models list`) and the fine-tuned models on top of them. The first request
for a model that is not loaded loads it; loading one that does not fit the memory budget
first unloads the least recently used idle models; one that cannot fit even alone is a
400 `model_too_large`, never an out-of-memory crash. A model idle for longer than the
keep-alive is unloaded (Ollama's `keep_alive`), except the model named at start, which
stays until another model needs its memory.

Memory is reckoned before loading by the one estimate `server.models.info.serving_memory`
(server/models/memory.py): the weights as the engine will hold them, a KV cache, and
runtime buffers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from server.engine.base import Engine
from server.engine.runner.process import rss_bytes as process_rss
from server.engine.templates import ChatTemplate
from server.engine.worker import GenerationWorker
from server.models.memory import default_budget
from server.models.options import ModelOptions

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class LoadedModel:
    """A model ready to serve: its engine, the worker that runs it, its template."""

    id: str
    engine: Engine
    worker: GenerationWorker
    template: ChatTemplate
    created: int = field(default_factory=lambda: int(time.time()))
    owned_by: str = "pomar"
    parent: str | None = None
    #: a LoRA adapter applied on the shared base engine (fine-tuned models)
    adapter: Path | None = None
    #: the model's own sampling defaults (temperature, top_p) for requests that name none
    sampling: dict[str, float] = field(default_factory=dict)
    #: estimated bytes it holds (see the module docstring)
    memory: int = 0
    #: requests using it right now: a leased model is never unloaded
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ModelSpec:
    """A base model the server can serve, loaded now or on demand."""

    id: str
    path: Path
    backend: str
    created: int
    #: the model named at start: never unloaded for being idle
    pinned: bool = False
    #: its own settings (`pomar models set`), over the server's
    options: ModelOptions = field(default_factory=ModelOptions)


@dataclass(frozen=True)
class AdapterSpec:
    """A fine-tuned model: a LoRA adapter served on its (shared) base."""

    id: str
    base_id: str
    adapter: Path
    created: int
    #: what `/v1/models` names as its parent: the base, or the `ft:` model it was trained from
    parent: str | None = None


@dataclass(frozen=True)
class Listing:
    """One row of `/v1/models`."""

    id: str
    created: int
    parent: str | None
    loaded: bool


def rss_bytes() -> int:
    """This process's resident memory now (0 where /proc is not there)."""
    return process_rss() or 0


def measured_bytes(engine: Engine) -> int | None:
    """What a runner engine holds now (engine_process, on Linux), else None."""
    measure = getattr(engine, "resident_bytes", None)
    return measure() if measure is not None else None


class Lease:
    """A request's hold on a model: while held, the model is not unloaded."""

    def __init__(self, model: LoadedModel, release: Callable[[LoadedModel], None]) -> None:
        self.model = model
        self._release = release
        self._released = False
        self._held_by_stream = False

    def release(self) -> None:
        """Give the model back (idempotent)."""
        if not self._released:
            self._released = True
            self._release(self.model)

    def release_unless_streaming(self) -> None:
        """Release, unless `hold` handed the lease to a stream that releases it at its end."""
        if not self._held_by_stream:
            self.release()

    def hold(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Wrap a response stream so the lease lasts until the stream ends or is closed."""
        self._held_by_stream = True

        async def held() -> AsyncIterator[T]:
            try:
                async for item in items:
                    yield item
            finally:
                self.release()

        return held()


Loader = Callable[[ModelSpec], Awaitable[LoadedModel]]


@dataclass
class Residency:
    """The budget and keep-alive rules, and how to load a model."""

    loader: Loader
    budget: int = field(default_factory=default_budget)
    #: seconds an idle model stays loaded; negative: forever
    keep_alive: float = 300.0
    #: how long a load waits for busy models to finish before a 503
    busy_wait: float = 120.0


async def wait_until(check: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True
