"""Backend-independent generation: token step -> text chunks -> whole completion.

Stop strings are matched on the decoded text, across token boundaries, and are
never emitted: text that might be the start of a stop string is held back until
it is known not to be one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from server.engine.base import PAUSE, Engine, GenerationParams, Sampled, ShouldStop
from server.engine.detokenizer import Detokenizer

T = TypeVar("T")


@dataclass(frozen=True)
class Chunk:
    """A piece of completion text; the last chunk of a completion has `finish_reason`.

    A chunk before the first token may be empty (no text, no tokens, no finish): the
    backend paused to let other streams start (see `base.PAUSE`); skip it.
    """

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    #: the sampled tokens behind this text, when the request asked for logprobs
    tokens: tuple[Sampled, ...] = ()
    #: prompt tokens served from the engine's prompt cache, on every chunk of the
    #: completion (OpenAI's `usage.prompt_tokens_details.cached_tokens`)
    cached_tokens: int = 0
    #: on the last chunk of a completion a stop string ended: that string
    stop_sequence: str | None = None


@dataclass(frozen=True)
class Completion:
    """A whole completion."""

    text: str
    completion_tokens: int
    finish_reason: str
    tokens: tuple[Sampled, ...] = ()
    cached_tokens: int = 0


class StopMatcher:
    """Finds stop strings in streamed text and holds back possible partial matches."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._pending = ""
        #: the stop string that was found, once one was
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was found)."""
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, False
        # the stop string that completes first wins (earliest end, then earliest start),
        # so the result does not depend on how the text was split into pieces
        hits = [(i + len(s), i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            _, start, self.matched = min(hits)
            out = self._pending[:start]
            self._pending = ""
            return out, True
        keep = self._partial_suffix()
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        """The held-back text, once generation ended without a stop string."""
        out, self._pending = self._pending, ""
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest suffix of pending text that begins some stop string."""
        text = self._pending
        for n in range(min(self._hold, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0


def stream_chunks(
    engine: Engine, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
) -> Iterator[Chunk]:
    """Run one completion, yielding text chunks; the last one carries `finish_reason`.

    Ends early (finish_reason "cancelled") when `should_stop()` turns true.
    """
    detok = Detokenizer(engine.tokenizer, params.shown_token_ids)
    matcher = StopMatcher(params.stop)
    tokens = engine.token_stream(prompt_ids, params, should_stop)
    keep = params.top_logprobs is not None
    # tokens whose text is held back (partial stop string, partial UTF-8) ride with
    # the next chunk that has text
    pending: list[Sampled] = []
    count = cached = 0
    last: Chunk | None = None  # a stop string's or the length's chunk, sent after closing
    try:
        for sampled in tokens:
            if sampled is PAUSE:
                # hand the worker to the other streams (an empty chunk, skipped downstream)
                yield Chunk("", count)
                continue
            if sampled.cached_tokens is not None:
                cached = sampled.cached_tokens
            if should_stop():
                finish = "cancelled"
                break
            if sampled.token in engine.eos_token_ids or sampled.token in params.stop_token_ids:
                finish = "stop"
                break
            count += 1
            if keep:
                pending.append(sampled)
            text, stopped = matcher.feed(detok.add(sampled.token))
            if stopped:
                last = Chunk(text, count, "stop", tuple(pending), cached, matcher.matched)
                break
            if count >= params.max_tokens:
                last = Chunk(text + matcher.flush(), count, "length", tuple(pending), cached)
                break
            if text:
                yield Chunk(text, count, None, tuple(pending), cached)
                pending = []
        else:
            # a backend ends its stream early only when cancelled or out of context
            finish = "cancelled" if should_stop() else "length"
    finally:
        # closed before the last chunk goes: the engine frees the sequence at once
        close = getattr(tokens, "close", None)
        if close is not None:
            close()
    if last is not None:
        yield last
    elif finish == "cancelled":
        yield Chunk("", count, finish, (), cached)
    else:
        yield Chunk(matcher.flush(), count, finish, tuple(pending), cached)


def complete(
    engine: Engine, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
) -> Completion:
    """Run one completion to the end and return it whole."""
    parts: list[str] = []
    sampled: list[Sampled] = []
    last = Chunk("", 0, "length")
    for chunk in stream_chunks(engine, prompt_ids, params, should_stop):
        parts.append(chunk.text)
        sampled.extend(chunk.tokens)
        last = chunk
    finish = last.finish_reason or "length"
    return Completion(
        "".join(parts), last.completion_tokens, finish, tuple(sampled), last.cached_tokens
    )


def interleave(streams: Sequence[Iterator[T]]) -> Iterator[tuple[int, T]]:
    """Round-robin over several streams on this thread: (stream index, item), one each in turn.

    For an engine that batches (`engine.max_concurrency > 1`) this lets the choices of
    one request (`n`, several prompts) decode together; an engine that does not must
    run its streams one after another instead. Closing this closes them all.
    """
    live = dict(enumerate(streams))
    try:
        while live:
            for index, stream in list(live.items()):
                try:
                    item = next(stream)
                except StopIteration:
                    del live[index]
                    continue
                yield index, item
    finally:
        for stream in live.values():
            close = getattr(stream, "close", None)
            if close is not None:
                close()
