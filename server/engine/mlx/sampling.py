"""Per-sequence MLX samplers: each owns its random key, so seeds hold inside a batch.

mlx-lm's samplers draw from MLX's global random state, which every sequence of a
batch would share: a seeded request's tokens would then depend on its neighbours.
Here each sampler splits its own key per step instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Sampler = Callable[[Any], Any]

_greedy: Sampler | None = None


def make_sampler(mx: Any, temperature: float, top_p: float, seed: int, top_k: int = 0) -> Sampler:
    """A sampler of log-probabilities (shape (1, vocab)) with mlx-lm's semantics.

    Temperature 0 is greedy; all greedy sequences share one sampler object, which
    lets mlx-lm's batch sample them in a single call. `top_k` (0: off) keeps the k most
    likely ids after top_p, as mlx-lm orders them.
    """
    if temperature == 0:
        return _greedy_sampler(mx)
    from mlx_lm.sample_utils import apply_top_k, apply_top_p

    key = mx.random.key(seed & 0xFFFFFFFF)
    scale = 1.0 / temperature

    def sample(logprobs: Any) -> Any:
        nonlocal key
        key, sub = mx.random.split(key)
        if 0 < top_p < 1.0:
            logprobs = apply_top_p(logprobs, top_p)
        if 0 < top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, top_k)
        return mx.random.categorical(logprobs * scale, key=sub)

    return sample


def _greedy_sampler(mx: Any) -> Sampler:
    global _greedy
    if _greedy is None:

        def greedy(logprobs: Any) -> Any:
            return mx.argmax(logprobs, axis=-1)

        _greedy = greedy
    return _greedy
