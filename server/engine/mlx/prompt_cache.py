"""Prompt (prefix) cache for the MLX engine: KV caches reused across requests.

A finished (or cancelled) sequence leaves its KV cache here, keyed by the tokens it
holds and the adapter that computed it. The next request whose prompt shares a
prefix with a stored entry (the next turn of a conversation, the same system prompt)
starts from a copy of that cache and only runs the model over the rest.

mlx-lm's `LRUPromptCache` does the storage: a token trie, LRU eviction bounded by
entry count and bytes, trimming of longer entries down to the shared prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class CacheHit:
    """What a lookup found: a KV cache (None: start cold) and the tokens still to run."""

    cache: list[Any] | None
    #: prompt tokens whose keys and values come from the cache
    cached: int
    #: the prompt tokens the model must still read (never empty)
    rest: list[int]


class PromptCache:
    """An LRU of KV caches, bounded by entries and bytes; use it from one thread only."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        from mlx_lm.models.cache import LRUPromptCache

        self._lru = LRUPromptCache(max_size=max(1, max_entries), max_bytes=max_bytes)
        self._enabled = max_entries > 0 and max_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored caches."""
        return int(self._lru.nbytes)

    def __len__(self) -> int:
        return len(self._lru)

    def fetch(self, key: str, prompt: list[int]) -> CacheHit:
        """A private copy of the cache sharing the longest prefix with `prompt`.

        At least the last prompt token is left to run: the model has to read it to
        produce the logits of the first completion token.
        """
        if not self._enabled or not prompt:
            return CacheHit(None, 0, list(prompt))
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        cache, rest = self._lru.fetch_nearest_cache(key, list(prompt))
        if cache is None:
            return CacheHit(None, 0, list(prompt))
        if not rest:
            # an exact hit: give back the last token so it is read again
            if not can_trim_prompt_cache(cache):
                return CacheHit(None, 0, list(prompt))
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return CacheHit(cache, len(prompt) - len(rest), list(rest))

    def store(self, key: str, tokens: list[int], cache: list[Any]) -> None:
        """Keep `cache`, which holds exactly `tokens`, for later requests."""
        if not self._enabled or not tokens:
            return
        import mlx.core as mx

        # materialise the slices taken out of the batch now: a lazy graph would keep
        # the whole batch's buffers alive and is tied to this thread's streams
        mx.eval([c.state for c in cache])
        self._lru.insert_cache(key, list(tokens), cache)
