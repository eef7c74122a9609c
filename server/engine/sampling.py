"""The CPU sampler, in numpy: one set of rules for the torch and GGUF engines.

Each step takes the model's last logits and applies logit_bias, OpenAI's presence and
frequency penalties (over sampled tokens only), the constraint's mask, then greedy or
temperature + nucleus sampling with a seeded numpy generator; logprobs come from the
adjusted, masked scores (before temperature). llama.cpp's own sampler chain has no
per-step mask hook and counts penalties over a window that includes the prompt, so the
GGUF engine samples here; the torch engine hands its logits here too, so both engines
answer a seed alike. The MLX engine samples on the device under the same rules
(`server.engine.mlx.sampling`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from server.engine.base import GenerationParams, Sampled, TokenConstraint

Floats = npt.NDArray[np.float32]

#: the first weight cut (relative to the best id's) candidates for top_p must pass; each
#: retry multiplies it by itself again when their mass falls short
_NUCLEUS_CUT = 1e-3
#: logit_bias entries up to which the bias is added id by id (see `Adjuster`)
_FEW_BIASES = 8


@dataclass
class Adjuster:
    """logit_bias and OpenAI's presence/frequency penalties for one completion."""

    params: GenerationParams
    vocab: int
    counts: Floats = field(init=False)
    _bias_ids: npt.NDArray[np.int64] = field(init=False)
    _bias_values: Floats = field(init=False)
    _few: list[tuple[int, np.float32]] | None = field(init=False)
    #: a presence or frequency penalty is asked for (the only readers of `counts`)
    _penalized: bool = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.vocab, dtype=np.float32)
        bias = {t: b for t, b in self.params.logit_bias.items() if 0 <= t < self.vocab}
        #: a few biases are added one by one: numpy's fancy indexing between two decodes
        #: (a cold cache) took ~30 µs for the two EOS ids of a benchmark, measured
        self._few = (
            [(t, np.float32(b)) for t, b in bias.items()] if len(bias) <= _FEW_BIASES else None
        )
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._penalized = bool(self.params.presence_penalty or self.params.frequency_penalty)

    def __call__(self, scores: Floats) -> Floats:
        """Adjust `scores` (a fresh copy of the logits) in place and return them."""
        if self._few is not None:
            for token, bias in self._few:
                scores[token] += bias
        else:  # more than _FEW_BIASES
            scores[self._bias_ids] += self._bias_values
        if self._penalized:
            p = self.params
            scores -= p.frequency_penalty * self.counts
            scores -= p.presence_penalty * (self.counts > 0).astype(np.float32)
        return scores

    def count(self, token: int) -> None:
        """Record a sampled token (the prompt never counts); only penalties read them,
        and a numpy scalar update between two decodes is ~10 µs (profiled)."""
        if self._penalized:
            self.counts[token] += 1.0


def log_softmax(scores: Floats) -> Floats:
    """Natural-log probabilities of `scores` (-inf entries stay -inf).

    float32 throughout: numpy's float64 exp is ~7x slower, a tenth of a decode step.
    """
    shifted = scores - np.max(scores)
    return shifted - np.float32(np.log(np.sum(np.exp(shifted), dtype=np.float64)))


def sample(scores: Floats, params: GenerationParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else temperature + nucleus sampling.

    With `top_k`, only the k most likely ids of the nucleus may be drawn (mlx-lm's order:
    top_p, then top_k, so the MLX engine samples the same set).
    """
    if params.temperature == 0:
        return int(scores.argmax())
    logits = scores / np.float32(params.temperature)
    weights = np.exp(logits - np.max(logits))  # unnormalized probabilities
    top_k = params.top_k if 0 < params.top_k < weights.shape[0] else 0
    if params.top_p < 1.0 or top_k:
        ids, kept = _nucleus(weights, params.top_p) if params.top_p < 1.0 else _best(weights, top_k)
        if top_k:
            kept[top_k:] = 0.0
        # draw in id order, as over the whole vocabulary: llama.cpp's logits for a prompt
        # differ in the last bits between a cold and a reused KV cache, which can swap two
        # near-equal ids in a probability order and, with it, the token a seed draws
        order = np.argsort(ids)
        return int(ids[order][_draw(kept[order], rng)])
    return _draw(weights, rng)


def _best(weights: Floats, k: int) -> tuple[npt.NDArray[np.intp], Floats]:
    """The k ids of highest weight, best first, and their weights."""
    ids = np.argpartition(-weights, k - 1)[:k]
    ids = ids[np.argsort(-weights[ids], kind="stable")]
    return ids, weights[ids].copy()


def _nucleus(weights: Floats, top_p: float) -> tuple[npt.NDArray[np.intp], Floats]:
    """The smallest best-first set of ids whose mass reaches top_p, and their weights.

    `weights` are exp(logit - max): the best id weighs 1. The nucleus lies among the few
    ids near the top, so it is looked for among the ids above a cut (one vectorized
    compare, ~30 µs for a 50k vocabulary, where an argpartition costs ~100 µs and a full
    sort ~2 ms), lowered until their mass reaches top_p; only those are sorted.
    """
    n = weights.shape[0]
    target = top_p * float(np.sum(weights, dtype=np.float64))
    cut = _NUCLEUS_CUT
    while True:
        ids = np.flatnonzero(weights >= cut) if cut > 0 else np.arange(n)
        if cut == 0 or float(np.sum(weights[ids], dtype=np.float64)) >= target:
            break
        cut = cut * _NUCLEUS_CUT if cut > 1e-30 else 0.0
    ids = ids[np.argsort(-weights[ids], kind="stable")]
    kept = weights[ids].copy()
    # keep the smallest set whose mass reaches top_p (always at least one token)
    kept[np.cumsum(kept, dtype=np.float64) - kept > target] = 0.0
    return ids, kept


def _draw(weights: Floats, rng: np.random.Generator) -> int:
    """An index drawn with probability proportional to `weights`."""
    cdf = np.cumsum(weights)  # float32: a float64 cumsum of the vocabulary costs 0.6 ms
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(index, weights.shape[0] - 1)


def sampled(token: int, scores: Floats, top: int | None) -> Sampled:
    """The token with its logprob and best alternatives, when the request asked."""
    if top is None:
        return Sampled(token)
    logprobs = log_softmax(scores)
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = np.argpartition(-logprobs, top - 1)[:top]
        ids = ids[np.argsort(-logprobs[ids], kind="stable")]
        best = tuple((int(i), float(logprobs[i])) for i in ids)
    return Sampled(token, float(logprobs[token]), best)


class CompletionSampler:
    """One completion's sampling state: penalties, grammar and the seeded generator."""

    def __init__(self, params: GenerationParams, vocab: int) -> None:
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self._params = params
        self._rng = np.random.default_rng(seed)
        self._adjust = Adjuster(params, vocab)
        self._constraint: TokenConstraint | None = (
            params.constraint() if params.constraint is not None else None
        )

    def next(self, logits: Floats) -> Sampled:
        """The next token from `logits` (float32, changed in place: the caller's own copy,
        or a buffer the engine writes over at its next step)."""
        scores = self._adjust(logits)
        if self._constraint is not None:
            scores[~self._constraint.allowed(scores.shape[-1])] = -np.inf
        token = sample(scores, self._params, self._rng)
        return sampled(token, scores, self._params.top_logprobs)

    def accept(self, token: int) -> None:
        """Record the token the completion goes on with (grammar state, penalty counts)."""
        if self._constraint is not None:
            self._constraint.advance(token)
        self._adjust.count(token)
