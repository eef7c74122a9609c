"""An engine runner: `python -m server.models.runner FD` (see server.engine.runner.remote).

Loads one engine, then serves the server's messages (`wire.py`) over the socket `FD`:
generations run on a `GenerationWorker` (interleaved up to the engine's batch size, as in
the server process), their items go back in batches. A runner dies with the server (the
socket closes; on Linux the kernel kills it too).
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from server.engine.base import PAUSE, Engine, GenerationParams
from server.engine.runner.process import die_with_parent, rss_bytes
from server.engine.runner.wire import (
    Call,
    Cancel,
    Event,
    Failure,
    Load,
    LoadFailed,
    Ready,
    Submit,
    pack,
)
from server.engine.worker import GenerationWorker

log = logging.getLogger("pomar.runner")


class Outbox:
    """Items for the server: a lone stream's go at once, the rest in batches by one thread.

    With one request in flight, handing each token to the sender thread costs a thread
    wake-up per token, which on a 2-core machine waits for a core that llama.cpp's threads
    hold (single-stream tok/s through the server rose ~2 %, measured with 3 alternating
    runs). With several, the sender thread sends what a batched step made as one message.
    Items are never reordered: one goes at once only when none waits for the thread.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._items: queue.SimpleQueue[Event] = queue.SimpleQueue()
        #: held while sending; `_waiting` counts items put for the thread and not yet sent
        self._lock = threading.Lock()
        self._waiting = 0
        self._thread = threading.Thread(target=self._send, name="runner-out", daemon=True)
        self._thread.start()

    def put(self, event: Event, *, alone: bool = False) -> None:
        """Send `event`; `alone`: its request is the only one in flight."""
        with self._lock:
            if alone and not self._waiting:
                self._send_now([event])
                return
            self._waiting += 1
        self._items.put(event)

    def _send(self) -> None:
        while True:  # a daemon thread: it ends with the runner
            batch = [self._items.get()]
            while True:  # everything made meanwhile rides along
                try:
                    batch.append(self._items.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                self._send_now(batch)
                self._waiting -= len(batch)

    def _send_now(self, batch: list[Event]) -> None:
        try:
            # not `Connection.send`: its ForkingPickler is a Python subclass made per
            # message, and tokens go as tuples (`wire.pack`)
            self._conn.send_bytes(pack(batch))
        except OSError:
            os._exit(0)  # the server is gone


def failure(exc: BaseException) -> Failure:
    """An exception as the server rebuilds it (type, message, and an API error's fields)."""
    details = {
        name: getattr(exc, name)
        for name in ("status_code", "error_type", "code", "param")
        if isinstance(getattr(exc, name, None), (str, int))
    }
    return Failure(type(exc).__name__, str(exc), details)


class Runner:
    """The engine, its worker, and the requests in flight."""

    def __init__(self, engine: Engine, worker: GenerationWorker, outbox: Outbox) -> None:
        self.engine = engine
        self.outbox = outbox
        self.worker = worker
        self.cancels: dict[int, threading.Event] = {}

    def submit(self, message: Submit) -> None:
        engine = self.engine

        def produce(should_stop: Callable[[], bool]) -> Iterator[Any]:
            params = message.params
            if message.grammar is not None:
                params = _with_grammar(engine, params, message.grammar)
            _adapter(engine, message.adapter)
            yield from engine.token_stream(message.prompt_ids, params, should_stop)

        self._run(message.request, produce)

    def call(self, message: Call) -> None:
        engine = self.engine

        def produce(_stop: Callable[[], bool]) -> Iterator[Any]:
            _adapter(engine, message.adapter)
            yield getattr(engine, message.method)(*message.args)

        self._run(message.request, produce)

    def cancel(self, message: Cancel) -> None:
        event = self.cancels.get(message.request)
        if event is not None:
            event.set()

    def _run(self, request: int, produce: Callable[[Callable[[], bool]], Iterator[Any]]) -> None:
        def push(item: tuple[str, Any]) -> None:
            kind, value = item
            if value is PAUSE:
                return  # the runner's own worker turn, nothing for the server
            if kind == "error":
                value = failure(value)
            if kind != "item":
                self.cancels.pop(request, None)
            self.outbox.put(Event(request, kind, value), alone=len(self.cancels) <= 1)

        self.cancels[request] = self.worker.submit(produce, push)


def _with_grammar(engine: Engine, params: GenerationParams, source: Any) -> GenerationParams:
    from dataclasses import replace

    from server.engine.constraints import Grammar, compiler_for

    compiler = compiler_for(engine.tokenizer, source.eos, source.param)
    return replace(params, constraint=compiler.compile(Grammar(source.text, source.param)))


def _adapter(engine: Engine, adapter: str | None) -> None:
    """Every request names its adapter (None: the bare base), as the server process does:
    the engine keeps the choice in this job's own state (jobs interleave on the thread)."""
    if not hasattr(engine, "activate_adapter"):
        return  # the embedding engine: no adapters
    try:
        engine.activate_adapter(Path(adapter) if adapter else None)
    except NotImplementedError:
        if adapter is not None:
            raise


#: the modules that import each engine's libraries, imported before the baseline memory
#: reading (`Ready.baseline_rss`)
_ENGINE_MODULES = {
    "mlx": ("mlx.core", "mlx.nn", "mlx_lm", "server.engine.mlx.backend"),
    "torch": ("torch", "transformers", "server.engine.torch.backend"),
    "gguf": ("llama_cpp", "server.engine.gguf.backend"),
    "embedding": ("torch", "sentence_transformers"),
}


def _load(load: Load) -> Any:
    if load.backend == "embedding":
        from server.engine.embeddings import EmbeddingEngine

        return EmbeddingEngine(Path(load.path))
    from server.models.loading import load_engine

    return load_engine(
        load.backend,
        Path(load.path),
        load.options,
        context=load.context,
        draft=Path(load.draft) if load.draft else None,
    )


def _on_worker(worker: GenerationWorker, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the worker's thread and wait for its value (or its exception)."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def produce(_stop: Callable[[], bool]) -> Iterator[Any]:
        yield fn()

    def push(item: tuple[str, Any]) -> None:
        kind, value = item
        if kind in ("item", "error"):
            result[kind] = value
        if kind != "item":
            done.set()

    worker.submit(produce, push)
    done.wait()
    if "error" in result:
        raise result["error"]
    return result["item"]


def main(argv: list[str]) -> int:
    """Load the engine the first message names, then serve until the socket closes."""
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s runner: %(message)s")
    conn = Connection(socket.socket(fileno=int(argv[0])).detach())
    load: Load = conn.recv()
    # the engine loads on the worker thread that will run it: MLX streams belong to the
    # thread that made them ("There is no Stream(cpu, 0) in current thread" otherwise)
    worker = GenerationWorker("runner")
    baseline = 0
    try:
        for module in _ENGINE_MODULES.get(load.backend, ()):
            importlib.import_module(module)
        baseline = rss_bytes() or 0
        engine = _on_worker(worker, lambda: _load(load))
    except Exception as exc:
        log.exception("could not load %s", load.path)
        conn.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
        return 1
    if load.backend == "embedding":
        conn.send(_embedding_ready(engine, load, baseline))
    else:
        worker.concurrency = engine.max_concurrency
        conn.send(
            Ready(
                backend=engine.backend,
                model_path=str(engine.model_path),
                tokenizer=engine.tokenizer,
                eos_token_ids=frozenset(engine.eos_token_ids),
                context_length=engine.context_length,
                max_concurrency=engine.max_concurrency,
                description=engine.describe(),
                pid=os.getpid(),
                baseline_rss=baseline,
            )
        )
    runner = Runner(engine, worker, Outbox(conn))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return 0  # the server closed its end
        if isinstance(message, Submit):
            runner.submit(message)
        elif isinstance(message, Cancel):
            runner.cancel(message)
        elif isinstance(message, Call) and message.method == "stats":
            # counters only: answered here, not queued behind the generations
            runner.outbox.put(Event(message.request, "item", engine.stats()))
        elif isinstance(message, Call):
            runner.call(message)


def _embedding_ready(engine: Any, load: Load, baseline: int) -> Ready:
    """`Ready` for the embedding engine: its facts travel in `extras`."""
    return Ready(
        backend="embedding",
        model_path=load.path,
        tokenizer=engine.tokenizer,
        eos_token_ids=frozenset(),
        context_length=engine.max_seq_length,
        max_concurrency=1,
        description=f"sentence-transformers on {engine.device}",
        pid=os.getpid(),
        baseline_rss=baseline,
        extras={"dimension": engine.dimension, "device": engine.device},
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
