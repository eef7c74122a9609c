"""What the GGUF batcher keeps for each slot of the cache and each open completion.

A `Slot` is one of llama.cpp's sequence ids: the tokens its stream of the cache holds,
and the logits its last prompt's final row gave. A `Sequence` is one completion: what it
still has to read, its sampler, the tokens it made. `batching.GGUFBatcher` moves them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from server.engine.base import Sampled
from server.engine.lookup import DraftSizer
from server.engine.sampling import CompletionSampler


@dataclass(eq=False)
class Slot:
    """One llama.cpp sequence id and what its part of the cache holds."""

    seq_id: int
    #: the adapter the cached keys and values were computed with ("" = the base)
    adapter: str = ""
    #: the token at each cached position, from 0
    tokens: list[int] = field(default_factory=list)
    owner: Sequence | None = None
    #: when it was last used (for choosing which idle slot to reuse or empty)
    used: int = 0
    #: (n, logits): the raw logits of the row of `tokens[n - 1]` when a prompt of n tokens
    #: was read, a copy of one vocabulary row; dropped when the cache loses position n - 1
    kept: tuple[int, Any] | None = None

    def truncate(self, length: int) -> None:
        """Forget the tokens from `length` on (the caller drops their cache)."""
        del self.tokens[length:]
        if self.kept is not None and self.kept[0] > length:
            self.kept = None


@dataclass(eq=False)
class Sequence:
    """One completion: its sampler, what it still has to read, the tokens it made."""

    order: int
    adapter: str
    prompt: list[int]
    sampler: CompletionSampler
    #: tokens it may still sample
    budget: int
    slot: Slot | None = None
    #: tokens to read into the cache (no logits) before `feed`
    todo: list[int] = field(default_factory=list)
    #: the token whose logits give the next sample
    feed: int = -1
    #: prompt tokens the cache already held when it got its slot
    cached: int = 0
    #: logits its slot kept from an earlier read of the whole prompt: its first token is
    #: sampled from (a copy of) them, with no step
    first: Any = None
    #: whether the logits of its first sample are kept for its slot
    keep: bool = False
    ready: deque[Sampled] = field(default_factory=deque)
    #: how many tokens its next draft may have, from how its drafts fared
    sizer: DraftSizer = field(default_factory=DraftSizer)
    finished: bool = False
    error: BaseException | None = None


def runs(sequence: Sequence) -> bool:
    """Whether a step would decode for the sequence (one with kept logits to sample
    first takes no step until it has)."""
    return (
        sequence.slot is not None
        and not sequence.finished
        and sequence.error is None
        and sequence.first is None
    )


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
