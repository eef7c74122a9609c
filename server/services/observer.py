"""What generation tells an observer (the server's metrics): tokens, their timing, prompts.

The services call a `GenerationObserver` they were given; they never import the metrics
module. `GenerationTrace` is one request's view: it keeps the request's start time and
each completion's last token, so an observer only hears plain numbers.
"""

from __future__ import annotations

import time
from typing import Protocol

from server.engine.generation import Chunk


class GenerationObserver(Protocol):
    """Hears what generation produced. Called on the model's worker thread."""

    def first_token(self, model: str, seconds: float) -> None:
        """A request's first generated token came `seconds` after the request started."""

    def tokens(self, model: str, count: int, seconds_each: float | None) -> None:
        """`count` tokens were generated, each `seconds_each` after the one before it in
        its completion (None: the first tokens of a completion have no token before)."""

    def prompt(self, model: str, tokens: int, cached: int) -> None:
        """A prompt of `tokens` tokens was read, `cached` of them from the prompt cache."""


class NoObserver:
    """Hears nothing (a service built without metrics)."""

    def first_token(self, model: str, seconds: float) -> None:
        pass

    def tokens(self, model: str, count: int, seconds_each: float | None) -> None:
        pass

    def prompt(self, model: str, tokens: int, cached: int) -> None:
        pass


NO_OBSERVER = NoObserver()


class GenerationTrace:
    """One request's generation as its observer hears it; made when the request starts."""

    def __init__(self, observer: GenerationObserver, model: str) -> None:
        self._observer = observer
        self._model = model
        self._started = time.perf_counter()
        self._first = True

    def completion(self) -> CompletionTrace:
        """The trace of one completion (a choice) of the request."""
        return CompletionTrace(self)

    def prompt(self, tokens: int, cached: int) -> None:
        """A prompt was read (once per prompt, as `usage` counts it)."""
        self._observer.prompt(self._model, tokens, cached)

    def _tokens(self, count: int, now: float, last: float | None) -> None:
        if self._first:
            self._first = False
            self._observer.first_token(self._model, now - self._started)
        each = None if last is None else (now - last) / count
        self._observer.tokens(self._model, count, each)


class CompletionTrace:
    """One completion's chunks: how many tokens each brought, and when."""

    def __init__(self, request: GenerationTrace) -> None:
        self._request = request
        self._count = 0
        self._last: float | None = None

    def chunk(self, chunk: Chunk) -> None:
        """A chunk of this completion was produced (`completion_tokens` counts so far)."""
        new = chunk.completion_tokens - self._count
        if new <= 0:  # a pause, the end-of-sequence token, held-back text: no new token
            return
        now = time.perf_counter()
        self._request._tokens(new, now, self._last)
        self._count, self._last = chunk.completion_tokens, now


def trace(observer: GenerationObserver | None, model: str) -> GenerationTrace:
    """A request's trace for `observer` (None: nobody listens)."""
    return GenerationTrace(observer or NO_OBSERVER, model)
