"""An engine that runs in a runner process: the server's side of `child.py`.

`RemoteEngine` is an `Engine` like the in-process ones, so the services, the worker and
the generation pipeline (detokenizing, stop strings, parsers) do not change: its
`token_stream` sends the request to the runner and yields the `Sampled` items that come
back. The runner's batches are routed to each request's queue by the event loop
(`loop_reader`, where `wait_ready` is given one: the server's) or by a reader thread. When the
runner dies (a signal, the OOM killer, an exit), every request in flight ends with
`EngineCrashed` (503, naming the model and the signal) and `crashed` says how; the model
registry loads a new runner for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from server.engine.base import PAUSE, Engine, GenerationParams, Sampled, ShouldStop
from server.engine.loop_worker import loop_waker, nothing_after, starve
from server.engine.runner.loop_reader import LoopReader
from server.engine.runner.process import exit_description, rss_bytes
from server.engine.runner.wire import (
    Call,
    Cancel,
    Event,
    Failure,
    GrammarSource,
    Load,
    LoadFailed,
    Ready,
    Submit,
    unpack,
)
from server.engine.worker import job_state
from server.errors import EngineError, ModelLoadError, PomarError

log = logging.getLogger(__name__)

#: how long a stream waits for its runner's next item before letting the worker serve
#: the other streams (PAUSE); well under a token's decode time
WAIT_S = 0.005
#: the same wait for the only stream open on the runner. Each PAUSE wakes the event loop
#: (an empty chunk): with 5 ms waits, twice a token on the embedded model, CPU that 2
#: cores' llama.cpp threads need (docs/engines.md); a longer wait only delays a new
#: request's start by as much
ALONE_WAIT_S = 0.025


class EngineCrashed(PomarError):
    """The model's runner process died while serving the request (503)."""

    status_code = 503
    error_type = "server_error"
    code = "engine_crashed"


class RemoteEngine(Engine):
    """The engine of one loaded model, in its own process."""

    def __init__(self, name: str, load: Load) -> None:
        """Start the runner; `wait_ready` then waits for its engine.

        Start it on a thread that lives as long as the server (the event loop's): on
        Linux the runner is killed when the thread that started it ends."""
        self.name = name
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "server.models.runner", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(load)
        self._crashed: str | None = None
        self._closed = threading.Event()  # the runner's end of the socket closed
        #: requests the runner completed (a death after some is not "in a row")
        self.completed = 0
        self._ids = itertools.count(1)
        self._inboxes: dict[int, queue.SimpleQueue[Event]] = {}
        #: the wakers of requests advanced on the event loop (`LoopWorker`)
        self._wakers: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._loop_reader: LoopReader | None = None

    def wait_ready(self, loop: asyncio.AbstractEventLoop | None = None) -> RemoteEngine:
        """Block until the runner loaded the model; `ModelLoadError` when it could not.

        With `loop` (a running event loop; call this on another thread) that loop reads
        the runner's socket, else a reader thread does."""
        try:
            ready = self._conn.recv()
        except (EOFError, OSError):
            self._process.wait()
            ready = LoadFailed(f"the runner died while loading ({self._how()})")
        if not isinstance(ready, Ready):
            self.close()
            raise ModelLoadError(f"{self.name}: {ready.message}")
        self.info = ready
        self.backend = ready.backend
        self.model_path = ready.model_path
        self.tokenizer = ready.tokenizer
        self.eos_token_ids = ready.eos_token_ids
        self.pid = ready.pid
        if loop is not None:
            self._loop_reader = LoopReader(loop, self._conn.fileno(), self._deliver, self._ended)
            loop.call_soon_threadsafe(self._loop_reader.attach)
        else:
            name = f"runner-{self.name}"
            threading.Thread(target=self._read, name=name, daemon=True).start()
        return self

    @property
    def crashed(self) -> str | None:
        """How the runner died (e.g. "signal SIGSEGV"); None while it runs. Seen at once:
        a dead process (before the reader thread reads its socket's end) or a closed
        socket (`poll` cannot tell while the reader thread is reaping it)."""
        if self._crashed is None and (self._closed.is_set() or self._process.poll() is not None):
            return self._how()
        return self._crashed

    # ------------------------------------------------------------------ engine

    @property
    def context_length(self) -> int:
        return self.info.context_length

    @property
    def max_concurrency(self) -> int:
        return self.info.max_concurrency

    def describe(self) -> str:
        return f"{self.info.description}, in runner process {self.pid}"

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        # applied in the runner with each request: remember this job's choice
        job_state()["remote_adapter"] = str(adapter_dir) if adapter_dir else None

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        grammar = _grammar_of(params)
        message = Submit(
            request=next(self._ids),
            prompt_ids=list(prompt_ids),
            params=replace(params, constraint=None),
            grammar=grammar,
            adapter=job_state().get("remote_adapter"),
        )
        waker = loop_waker()
        inbox = self._open(message.request, waker)
        finished = tokens = False
        try:
            self._send(message)
            while True:
                if waker is not None:  # on the event loop: never wait here
                    try:
                        event = inbox.get_nowait()
                    except queue.Empty:
                        if should_stop():
                            return
                        starve()  # the loop sleeps until the reader wakes it
                        yield PAUSE
                        continue
                else:
                    try:
                        # another stream's item waiting: hand the worker over at once;
                        # else wait here a little for ours (a step's items come together)
                        event = inbox.get(**self._wait(inbox))
                    except queue.Empty:
                        if should_stop():
                            return
                        yield PAUSE  # let the worker advance the other streams meanwhile
                        continue
                if event.kind == "item":
                    tokens = True
                    if waker is None:
                        yield event.value
                        continue
                    nothing_after(inbox.empty())
                    try:
                        yield event.value
                    finally:
                        nothing_after(False)
                elif event.kind == "done":
                    finished = True
                    return
                else:
                    finished = True
                    tokens = False
                    raise rebuild(event.value, self.name)
        finally:
            if not finished and self.crashed is None:
                self._send(Cancel(message.request))
            self._close(message.request)
            if tokens and self.crashed is None:
                self.completed += 1  # served (the caller may stop before the engine ends)

    def score(self, prompt_ids: list[int], top: int) -> list[Sampled]:
        value: list[Sampled] = self._call("score", list(prompt_ids), top)
        return value

    def stats(self) -> dict[str, int]:
        """The runner engine's figures (answered at once, beside its generations), and
        the runner's pid."""
        if self.crashed is not None:
            return {"max_batch_size": self.max_concurrency}
        value: dict[str, int] = self._call("stats")
        return {**value, "runner_pid": self.pid}

    def resident_bytes(self) -> int | None:
        """What the model holds in its runner (Linux: /proc), for the residency budget:
        the runner's resident memory above what it held before loading the weights. The
        interpreter and engine libraries under that line (~0.3-0.4 GB a runner, measured in
        docs/engines.md) are not counted, as the server process's own are not."""
        now = rss_bytes(self.pid)
        if now is None:
            return None
        return max(0, now - self.info.baseline_rss)

    def clear_cache(self) -> None:
        """Forget the runner engine's prompt cache (where it has one)."""
        self._call("clear_cache")

    # ------------------------------------------------------------------ process

    def close(self) -> None:
        """Stop the runner (unloading the model): it exits when its socket closes."""
        # shut the socket down first: closing our descriptor alone does not end the
        # reader thread's blocked recv, so the runner would never see the end of it (read
        # by the loop, the loop sees the end and stops watching it)
        try:
            probe = socket.socket(fileno=os.dup(self._conn.fileno()))
        except OSError:
            probe = None  # closed already
        if probe is not None:
            with contextlib.suppress(OSError):
                probe.shutdown(socket.SHUT_RDWR)
            probe.close()
        if self._loop_reader is not None:
            self._loop_reader.stop()
        self._conn.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _call(self, method: str, *args: Any) -> Any:
        if loop_waker() is not None:
            # it would block the event loop: such producers ask for the worker thread
            raise EngineError(f"{method} waits for the runner: not from the event loop")
        message = Call(next(self._ids), method, args, job_state().get("remote_adapter"))
        inbox = self._open(message.request)
        try:
            self._send(message)
            event = inbox.get()
        finally:
            self._close(message.request)
        if event.kind == "error":
            raise rebuild(event.value, self.name)
        return event.value

    def _wait(self, mine: queue.SimpleQueue[Event]) -> dict[str, Any]:
        """How a stream waits for its next item: not at all when another open request
        has one waiting (the worker serves that one first), briefly when others are open,
        longer when it is the only one."""
        with self._lock:
            others = [
                inbox
                for request, inbox in self._inboxes.items()
                if inbox is not mine and request not in self._wakers  # the loop's own
            ]
        if any(not inbox.empty() for inbox in others):
            return {"block": False}
        return {"block": True, "timeout": WAIT_S if others else ALONE_WAIT_S}

    def _open(
        self, request: int, waker: Callable[[], None] | None = None
    ) -> queue.SimpleQueue[Event]:
        inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            if self._crashed is not None:
                raise self._crash_error()
            self._inboxes[request] = inbox
            if waker is not None:
                self._wakers[request] = waker
        return inbox

    def _close(self, request: int) -> None:
        with self._lock:
            self._inboxes.pop(request, None)
            self._wakers.pop(request, None)

    def _send(self, message: Any) -> None:
        try:
            with self._lock:
                self._conn.send(message)
        except OSError:
            pass  # the runner is gone: the reader reports it to every open request

    def _read(self) -> None:
        """The reader thread: every message of the runner, then its end."""
        while True:
            try:
                data = self._conn.recv_bytes()
            except (EOFError, OSError):
                break
            self._deliver(data)
        self._ended()

    def _deliver(self, data: bytes) -> None:
        """Route one message of the runner (a batch of items) to the requests' queues."""
        batch = unpack(data)
        wake: dict[int, Callable[[], None]] = {}
        with self._lock:
            for event in batch:
                inbox = self._inboxes.get(event.request)
                if inbox is not None:
                    inbox.put(event)
                    if event.request in self._wakers:
                        wake[event.request] = self._wakers[event.request]
        for waker in wake.values():  # once a request, however many items came
            waker()

    def _ended(self) -> None:
        """The runner's socket closed: reap the runner, fail what was in flight."""
        self._closed.set()
        self._process.wait()
        with self._lock:
            self._crashed = self._how()
            inboxes, self._inboxes = self._inboxes, {}
            wakers, self._wakers = self._wakers, {}
        if inboxes or self._process.returncode != 0:
            log.error("the runner of %s died (%s)", self.name, self.crashed)
        error = Failure("EngineCrashed", self._crashed or "")
        for request, inbox in inboxes.items():
            inbox.put(Event(request, "error", error))
        for waker in wakers.values():
            waker()

    def _how(self) -> str:
        code = self._process.poll()
        return "its connection closed" if code is None else exit_description(code)

    def _crash_error(self) -> EngineCrashed:
        return EngineCrashed(
            f"The engine of model '{self.name}' crashed ({self.crashed}); the request was "
            "lost. The model is loaded again for the next request."
        )


def _grammar_of(params: GenerationParams) -> GrammarSource | None:
    from server.engine.constraints import GrammarFactory

    factory = params.constraint
    if factory is None:
        return None
    if not isinstance(factory, GrammarFactory):
        raise EngineError("this constraint cannot be sent to an engine runner")
    return GrammarSource(factory.grammar.text, factory.grammar.param, factory.eos)


def rebuild(failure: Failure, model: str) -> PomarError:
    """The runner's exception as the server reports it: an API error keeps its status,
    code and param; anything else is a 500 without internals (logged here)."""
    if failure.kind == "EngineCrashed":
        return EngineCrashed(
            f"The engine of model '{model}' crashed ({failure.message}); the request was "
            "lost. The model is loaded again for the next request."
        )
    details = failure.details
    if "status_code" in details:
        error = PomarError(failure.message, param=details.get("param"), code=details.get("code"))
        error.status_code = int(details["status_code"])
        error.error_type = str(details.get("error_type", "server_error"))
        return error
    log.error("engine error in the runner of %s: %s: %s", model, failure.kind, failure.message)
    return EngineError("The engine failed while generating.")


def runner_load(
    backend: str, path: Path, options: dict[str, int], context: int | None, draft: Path | None
) -> Load:
    """The `Load` message for `load_engine`'s arguments."""
    return Load(backend, str(path), dict(options), context, str(draft) if draft else None)
