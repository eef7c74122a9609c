"""The narrow interface every engine backend implements.

A backend only knows how to turn prompt token ids into a stream of sampled token
ids (the token step). Detokenization, stop strings, limits and finish reasons are
shared by all backends in `server.engine.generation`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one completion, already validated by the protocol layer."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    #: sample among the k most likely tokens only (0: no limit)
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    #: None: no log probabilities; k (0-20): each token's logprob and its k best alternatives
    top_logprobs: int | None = None
    #: ids that end this completion besides the engine's eos (e.g. a FIM end token)
    stop_token_ids: frozenset[int] = frozenset()
    #: special tokens whose text the completion shows (tool-call and reasoning markers,
    #: which the parsers read); other special tokens are never part of the text
    shown_token_ids: frozenset[int] = frozenset()
    #: makes a fresh grammar state per completion; None: unconstrained
    constraint: Callable[[], TokenConstraint] | None = None


class TokenConstraint(abc.ABC):
    """Grammar state of one completion: which token ids may come next.

    Backends call `bitmask()` before each sampling step and `advance(token)` after it;
    the mask is llguidance's packed int32 layout (bit i of word i // 32 allows id i), so
    backends apply it with llguidance's mlx / torch helpers.
    """

    @abc.abstractmethod
    def bitmask(self) -> Any:
        """A numpy int32 array of shape (1, ceil(vocab / 32)) of the ids allowed next."""

    @abc.abstractmethod
    def advance(self, token: int) -> None:
        """Consume the sampled token."""

    def allowed(self, width: int) -> Any:
        """The mask as a numpy bool array of `width` logits (ids past the mask: refused)."""
        import numpy as np

        # the int32 words are little-endian, so their bytes unpack in id order
        bits = np.unpackbits(self.bitmask().reshape(-1).view(np.uint8), bitorder="little")
        out = np.zeros(width, dtype=bool)
        n = min(width, bits.shape[0])
        out[:n] = bits[:n].astype(bool)
        return out


@dataclass(frozen=True)
class Sampled:
    """One sampled token, with its log probability when the request asked for them."""

    token: int
    #: natural-log probability of `token` under the (biased, masked) distribution
    logprob: float | None = None
    #: the most likely ids and their logprobs, best first (len = params.top_logprobs)
    top: tuple[tuple[int, float], ...] = ()
    #: on a completion's first token only: how many prompt tokens the backend took
    #: from its prompt cache instead of running the model over them (None: unknown)
    cached_tokens: int | None = None


#: Yielded by a backend's `token_stream` in place of a token, to hand the worker thread
#: to the other open streams first: a batching backend pauses once before its first
#: step so that requests arriving together are prefilled together. Compare with `is`.
PAUSE = Sampled(-1)

ShouldStop = Callable[[], bool]


class Engine(abc.ABC):
    """A loaded model that samples tokens. Methods run on the engine's worker thread."""

    #: short backend name, e.g. "mlx" or "torch"
    backend: str
    #: the HF tokenizer (PreTrainedTokenizerFast) of the model
    tokenizer: Any
    #: ids that end a completion (eos and the template's end-of-turn)
    eos_token_ids: frozenset[int]
    #: where the weights came from
    model_path: str

    @abc.abstractmethod
    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        """Yield sampled tokens one at a time, forever or until `should_stop()`.

        Honours every field of `params` that shapes sampling: temperature, top_p, top_k, seed,
        penalties, logit_bias, the constraint's mask, and the logprobs it asks for.

        The caller stops iterating at eos, a stop string or the token limit, and
        closes the generator; a backend must release its per-request state then.
        A backend may also yield `PAUSE` (no token) to let other streams run first.
        """

    def score(self, prompt_ids: list[int], top: int) -> list[Sampled]:
        """How likely the model finds each prompt token after the ones before it.

        Returns `len(prompt_ids) - 1` items: item i is `prompt_ids[i + 1]` with its
        natural-log probability under the raw model distribution (no temperature, bias,
        penalties or mask) and its `top` best alternatives, best first; the first token
        has nothing before it to be scored on. Runs on the worker thread, with the
        adapter `activate_adapter` chose; the caller keeps the prompt within
        `context_length`. Used by `/v1/completions` with `echo` and `logprobs`.
        """
        raise NotImplementedError(f"the {self.backend} engine does not score prompts")

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        """Apply this LoRA adapter (None: the bare base) to the next generations.

        Called on the worker thread before each request; the base weights stay loaded.
        """
        raise NotImplementedError(f"the {self.backend} engine does not serve adapters")

    @property
    def context_length(self) -> int:
        """Maximum positions the model takes (prompt + completion)."""
        return 2048

    @property
    def max_concurrency(self) -> int:
        """How many token streams the worker may interleave (1: one request at a time).

        Above 1 the backend batches the streams open at once; it must keep each
        stream's state apart (its own sampler, seed, penalties and constraint).
        """
        return 1

    def describe(self) -> str:
        """One line for the log: backend, device, dtype."""
        return self.backend

    def stats(self) -> dict[str, int]:
        """How the engine is serving, for `/health`: `max_batch_size`, and where the
        engine counts them `open_sequences`, `largest_batch`, `drafted_tokens` and
        `accepted_tokens` (speculative decoding)."""
        return {"max_batch_size": self.max_concurrency}
