"""Prompt-lookup speculative decoding of one MLX sequence, outside the batches.

mlx-lm's `BatchGenerator` decodes one row per sequence and step, so a draft cannot be
verified inside a batch. A speculating sequence therefore runs the model alone, with
its own KV cache: each forward reads the last sampled token and the tokens prompt
lookup drafted after it (`server.engine.lookup`), and the sequence's own logits
processors and sampler then take the rows in turn, as plain decoding would have taken
them one step at a time, going on while the sampled token is the drafted one. The
cache drops the refused drafts' keys and values (`trim_prompt_cache`), so only models
whose caches can be trimmed at any length speculate (no rotating, sliding-window or
recurrent caches). The prompt cache works as for the batches: a sequence starts from
its hit and leaves its cache there when it ends.

All methods run on the engine's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from server.engine.lookup import DraftSizer, lookup_draft
from server.engine.mlx.batching import PREFILL_STEP
from server.engine.mlx.prompt_cache import PromptCache


def can_speculate(model: Any) -> bool:
    """Whether the model's KV cache can drop any number of its last tokens.

    A rotating (sliding-window) cache is trimmable only until it wraps, so it counts
    as not trimmable here; recurrent states (`ArraysCache`) never are.
    """
    from mlx_lm.models.cache import CacheList, RotatingKVCache, make_prompt_cache

    def layers(caches: Any) -> Iterator[Any]:
        for c in caches:
            if isinstance(c, CacheList):
                yield from layers(c.caches)
            else:
                yield c

    cache = make_prompt_cache(model)
    every = list(layers(cache))
    return bool(every) and all(
        c.is_trimmable() and not isinstance(c, RotatingKVCache) for c in every
    )


class Speculator:
    """Decodes sequences by prompt lookup with verification, one model forward per step."""

    def __init__(
        self,
        model: Any,
        activate: Callable[[str], None],
        prompt_cache: PromptCache,
        draft_tokens: int,
    ) -> None:
        """`activate(key)` switches the model to an adapter ("" the base); `draft_tokens`
        bounds one step's draft."""
        import mlx.core as mx

        self._mx = mx
        self._model = model
        self._activate = activate
        self._cache = prompt_cache
        self.draft_tokens = max(1, draft_tokens)
        #: tokens prompt lookup proposed, and how many of them the model confirmed
        self.drafted = self.accepted = 0
        #: sequences decoding now
        self.active = 0

    def open(
        self,
        prompt: list[int],
        adapter: str,
        sampler: Callable[[Any], Any],
        processors: list[Any],
        limit: int,
    ) -> SpeculativeSequence:
        """A sequence of `prompt` under `adapter`, starting from its prompt-cache hit."""
        return SpeculativeSequence(self, prompt, adapter, sampler, processors, limit)

    def forward(self, adapter: str, tokens: list[int], cache: list[Any]) -> Any:
        """The logits of each of `tokens` read after `cache` (which grows by them)."""
        mx = self._mx
        # other streams' steps may have switched the weights since this one's last step
        self._activate(adapter)
        logits = self._model(mx.array(tokens)[None], cache=cache)[0]
        mx.eval(logits)
        return logits


class SpeculativeSequence:
    """One completion decoded by a `Speculator`; `tokens()` yields it."""

    def __init__(
        self,
        owner: Speculator,
        prompt: list[int],
        adapter: str,
        sampler: Callable[[Any], Any],
        processors: list[Any],
        limit: int,
    ) -> None:
        self._owner = owner
        self._adapter = adapter
        self._sampler = sampler
        self._processors = processors
        self._limit = limit
        self._history = list(prompt)
        self._hit = owner._cache.fetch(adapter, prompt)
        #: prompt tokens that came from the prompt cache
        self.cached = self._hit.cached
        #: how far the next draft may reach, from how the recent drafts fared
        self._sizer = DraftSizer()

    def tokens(self) -> Iterator[tuple[int, Any]]:
        """Each sampled token with its logprob vector, up to the limit.

        Closing the iterator early (a stop, a cancel) is fine: the cache goes to the
        prompt cache, holding exactly the tokens it has read that the stream kept.
        """
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        owner, mx, history = self._owner, self._owner._mx, self._history
        hit = self._hit
        cache = hit.cache if hit.cache is not None else make_prompt_cache(owner._model)
        held = hit.cached  # tokens whose keys and values the cache holds
        intact = False  # the cache holds what `held` says (no forward failed midway)
        owner.active += 1
        try:
            # as a batch reads a prompt: all but its last token in PREFILL_STEP slices,
            # then the last one alone, so the first row is a plain step's
            rest = hit.rest
            owner._activate(self._adapter)
            for start in range(0, len(rest) - 1, PREFILL_STEP):
                chunk = rest[start : min(start + PREFILL_STEP, len(rest) - 1)]
                owner._model(mx.array(chunk)[None], cache=cache)
                mx.eval([c.state for c in cache])
                held += len(chunk)
            logits = owner.forward(self._adapter, rest[-1:], cache)
            held += 1
            intact = True
            drafts: list[int] = []
            made = 0
            while True:
                # row i read the drafts before it: sample it as a plain step would have,
                # and go on while the sampled token is the drafted one
                for i in range(len(drafts) + 1):
                    token, logprobs = self._sample(logits[i : i + 1])
                    history.append(token)
                    made += 1
                    yield token, logprobs
                    if made >= self._limit:
                        return
                    if i == len(drafts) or token != drafts[i]:
                        break
                if drafts:
                    self._judge(len(drafts), i)
                    refused = held - (len(history) - 1)
                    if refused > 0:  # the refused drafts' keys and values
                        trim_prompt_cache(cache, refused)
                        held -= refused
                drafts = self._draft(self._limit - made - 1)
                intact = False
                logits = owner.forward(self._adapter, [history[-1], *drafts], cache)
                held += 1 + len(drafts)
                intact = True
        finally:
            owner.active -= 1
            if intact:
                # keep only what the stream kept: its last token was never read
                extra = held - (len(history) - 1)
                if extra > 0:
                    trim_prompt_cache(cache, extra)
                    held -= extra
                owner._cache.store(self._adapter, history[:held], cache)

    def _sample(self, logits: Any) -> tuple[int, Any]:
        """The token sampled from one row (shape (1, vocab)) and its logprob vector.

        The processors get the tokens so far, whose last is the one this row read (the
        token sampled before): what a batch step gives them.
        """
        mx = self._owner._mx
        if self._processors:
            context = mx.array(self._history)
            for processor in self._processors:
                logits = processor(context, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        token = int(self._sampler(logprobs).item())
        return token, logprobs[0]

    def _draft(self, room: int) -> list[int]:
        """The next draft: none while paused, at most `room` (the limit) or its size."""
        size = min(self._owner.draft_tokens, self._sizer.allowed(), room)
        return lookup_draft(self._history, size) if size > 0 else []

    def _judge(self, drafted: int, confirmed: int) -> None:
        """Count a verified draft and size the next one (`DraftSizer`)."""
        owner = self._owner
        owner.drafted += drafted
        owner.accepted += confirmed
        self._sizer.judge(drafted, confirmed)
