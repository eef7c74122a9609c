"""MLX engine (mlx-lm): the primary backend. mlx is imported only when this loads."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from server.engine.base import Engine, GenerationParams, Sampled, ShouldStop, TokenConstraint
from server.engine.templates import end_of_turn_ids


class MLXEngine(Engine):
    """A model loaded by `mlx_lm.load`, sampled with mlx-lm's `generate_step`."""

    backend = "mlx"

    def __init__(self, model_path: Path) -> None:
        import mlx.core as mx
        from mlx_lm import load

        self._mx = mx
        model, wrapper = load(str(model_path))[:2]
        self._on_cpu = mx.default_device() == mx.cpu
        if self._on_cpu:
            # bf16 matmuls skip BLAS on the CPU path: fp32 decodes ~2x faster (DESIGN.md §4)
            model.set_dtype(mx.float32)
        self.model = model
        self.tokenizer = wrapper._tokenizer
        self.model_path = str(model_path)
        self.eos_token_ids = end_of_turn_ids(self.tokenizer, model_path)
        self._context = _context_length(model_path)
        self._adapters: Any = None

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        if adapter_dir is None and self._adapters is None:
            return
        if self._adapters is None:
            from server.engine.adapters_mlx import MLXAdapterSet

            self._adapters = MLXAdapterSet(self.model)
        self._adapters.activate(adapter_dir)

    @property
    def context_length(self) -> int:
        return self._context

    def describe(self) -> str:
        device = "cpu, float32" if self._on_cpu else "gpu"
        return f"mlx ({device})"

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        mx = self._mx
        # one worker thread runs one request at a time, so the global key is ours
        mx.random.seed(params.seed if params.seed is not None else random.getrandbits(32))
        sampler = make_sampler(temp=params.temperature, top_p=params.top_p)
        processors = _penalties(mx, params, len(prompt_ids))
        if params.constraint is not None:
            # last: the mask has the final word on which ids may be sampled
            processors.append(_masker(mx, params.constraint(), len(prompt_ids)))
        room = self._context - len(prompt_ids)
        steps = generate_step(
            mx.array(prompt_ids),
            self.model,
            max_tokens=max(0, min(params.max_tokens, room)),
            sampler=sampler,
            logits_processors=processors,
        )
        try:
            for token, logprobs in steps:
                yield _sampled(mx, int(token), logprobs, params.top_logprobs)
                if should_stop():
                    return
        finally:
            steps.close()


def _penalties(mx: Any, params: GenerationParams, n_prompt: int) -> list[Any]:
    """OpenAI's logit_bias and presence/frequency penalties as mlx logits processors.

    OpenAI counts only sampled tokens for the penalties, so the prompt is skipped
    (mlx-lm's own processors look at a window that includes the prompt).
    """
    processors: list[Any] = []
    if params.logit_bias:
        ids = mx.array(list(params.logit_bias.keys()))
        values = mx.array(list(params.logit_bias.values()), dtype=mx.float32)

        def bias(_tokens: Any, logits: Any) -> Any:
            logits[:, ids] = logits[:, ids] + values.astype(logits.dtype)
            return logits

        processors.append(bias)
    if params.presence_penalty or params.frequency_penalty:

        def penalize(tokens: Any, logits: Any) -> Any:
            generated = tokens[n_prompt:]
            if generated.size == 0:
                return logits
            counts = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[generated].add(1.0)
            penalty = params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
            return logits - penalty.astype(logits.dtype)

        processors.append(penalize)
    return processors


def _sampled(mx: Any, token: int, logprobs: Any, top: int | None) -> Sampled:
    """The token with its logprob and best alternatives, when the request asked."""
    if top is None:
        return Sampled(token)
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = mx.argpartition(-logprobs, kth=top - 1)[:top]
        values = logprobs[ids].tolist()
        best = tuple(sorted(zip(ids.tolist(), values, strict=True), key=lambda p: -p[1]))
    return Sampled(token, float(logprobs[token].item()), best)


def _masker(mx: Any, constraint: TokenConstraint, n_prompt: int) -> Any:
    """A logits processor that keeps only the ids the constraint allows next.

    generate_step calls processors with every token so far; the ones past the prompt
    that the constraint has not seen yet are fed to it first.
    """
    seen = n_prompt

    def mask(tokens: Any, logits: Any) -> Any:
        nonlocal seen
        for token in tokens[seen:].tolist():
            constraint.advance(int(token))
        seen = tokens.shape[0]
        allowed = mx.array(constraint.allowed(logits.shape[-1]))
        return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))

    return mask


def _context_length(model_path: Path) -> int:
    import json

    config = json.loads((model_path / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)
