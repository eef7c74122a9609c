"""MLX engine (mlx-lm): the primary backend. mlx is imported only when this loads."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.engine.base import PAUSE, Engine, GenerationParams, Sampled, ShouldStop, TokenConstraint
from server.engine.mlx.batching import BatchScheduler
from server.engine.mlx.prompt_cache import PromptCache
from server.engine.mlx.sampling import make_sampler
from server.engine.mlx.speculative import Speculator, can_speculate
from server.engine.templates import end_of_turn_ids
from server.engine.worker import job_state

log = logging.getLogger(__name__)

#: the job-state key of the adapter a job's streams use
_ADAPTER = "mlx.adapter"

#: default bounds of the prompt cache (the server's settings override them)
PROMPT_CACHE_ENTRIES = 16
PROMPT_CACHE_BYTES = 256 << 20
#: prompt tokens read per forward pass when scoring a prompt: bounds the logits held at
#: once (SCORE_STEP x vocabulary floats, 100 MB for the embedded model's 49k vocabulary)
SCORE_STEP = 512


class MLXEngine(Engine):
    """A model loaded by `mlx_lm.load`, decoded in continuous batches with a prompt cache.

    Concurrent `token_stream`s opened on the worker thread share one batch per adapter
    (see `server.engine.mlx.batching`); the worker interleaves their consumers when its
    concurrency allows (`max_concurrency`). With `draft_tokens` > 0 each stream is
    decoded alone by prompt lookup with verification instead
    (`server.engine.mlx.speculative`).
    """

    backend = "mlx"

    def __init__(
        self,
        model_path: Path,
        *,
        max_batch_size: int = 8,
        prompt_cache_entries: int = PROMPT_CACHE_ENTRIES,
        prompt_cache_bytes: int = PROMPT_CACHE_BYTES,
        context: int | None = None,
        draft_tokens: int = 0,
    ) -> None:
        """`context` caps the model's own context length (a per-model setting);
        `draft_tokens` > 0 turns on prompt-lookup speculation, up to that many drafted
        tokens a step, when the model's KV cache can be trimmed."""
        import mlx.core as mx
        from mlx_lm import load

        self._mx = mx
        model, wrapper = load(str(model_path))[:2]
        self._on_cpu = mx.default_device() == mx.cpu
        if self._on_cpu:
            # bf16 matmuls skip BLAS on the CPU path: fp32 decodes ~2x faster (docs/platform.md)
            model.set_dtype(mx.float32)
        self.model = model
        self.tokenizer = wrapper._tokenizer
        self.model_path = str(model_path)
        self.eos_token_ids = end_of_turn_ids(self.tokenizer, model_path)
        self._context = min(_context_length(model_path), context or 1 << 62)
        self._adapters: Any = None
        #: the adapter the next token_stream uses ("" = the base), and where each lives
        self._adapter_key = ""
        self._adapter_dirs: dict[str, Path | None] = {"": None}
        self.max_batch_size = max(1, max_batch_size)
        self.prompt_cache = PromptCache(prompt_cache_entries, prompt_cache_bytes)
        self._scheduler = BatchScheduler(
            model, self._switch_adapter, self.prompt_cache, self.max_batch_size
        )
        self._speculator: Speculator | None = None
        if draft_tokens > 0:
            if can_speculate(model):
                self._speculator = Speculator(
                    model, self._switch_adapter, self.prompt_cache, draft_tokens
                )
            else:
                # refused drafts could not be dropped from a rotating or recurrent cache
                log.warning("%s: its KV cache cannot be trimmed, no speculation", model_path)

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        # loads (and validates) it now; the batch of its requests switches to it per step.
        # The choice is the job's own: jobs interleave on the worker thread.
        key = "" if adapter_dir is None else str(adapter_dir)
        self._adapter_dirs[key] = adapter_dir
        self._adapter_key = key
        job_state()[_ADAPTER] = key
        self._switch_adapter(key)

    def _switch_adapter(self, key: str) -> None:
        adapter_dir = self._adapter_dirs[key]
        if adapter_dir is None and self._adapters is None:
            return
        if self._adapters is None:
            from server.engine.mlx.adapters import MLXAdapterSet

            self._adapters = MLXAdapterSet(self.model)
        self._adapters.activate(adapter_dir)

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def max_concurrency(self) -> int:
        return self.max_batch_size

    @property
    def open_sequences(self) -> int:
        """Token streams open now (in the batches, or speculating)."""
        speculating = self._speculator.active if self._speculator is not None else 0
        return self._scheduler.active + speculating

    @property
    def largest_batch(self) -> int:
        """The most streams one decode step has served together so far."""
        return self._scheduler.largest_batch

    def stats(self) -> dict[str, int]:
        own = {
            "max_batch_size": self.max_batch_size,
            "open_sequences": self.open_sequences,
            "largest_batch": self.largest_batch,
        }
        speculator = self._speculator
        if speculator is not None:
            own |= {"drafted_tokens": speculator.drafted, "accepted_tokens": speculator.accepted}
        return own

    def describe(self) -> str:
        device = "cpu, float32" if self._on_cpu else "gpu"
        if self._speculator is not None:
            return f"mlx ({device}, prompt lookup {self._speculator.draft_tokens})"
        return f"mlx ({device}, batch {self.max_batch_size})"

    def score(self, prompt_ids: list[int], top: int) -> list[Sampled]:
        """Each prompt token's logprob given the ones before it (see `Engine.score`).

        One sequence through the model outside the batches (their state is untouched;
        each batch step switches to its own adapter again). The KV cache it leaves is
        kept in the prompt cache, so a completion of the same prompt reads only its
        last token again.
        """
        mx = self._mx
        from mlx_lm.models.cache import make_prompt_cache

        if len(prompt_ids) > self._context:
            raise ValueError(f"{len(prompt_ids)} prompt tokens exceed the context")
        adapter = job_state().get(_ADAPTER, self._adapter_key)
        self._switch_adapter(adapter)
        cache = make_prompt_cache(self.model)
        out: list[Sampled] = []
        for start in range(0, len(prompt_ids), SCORE_STEP):
            chunk = prompt_ids[start : start + SCORE_STEP]
            # row i predicts the token after chunk[i]; the prompt's last row predicts none
            targets = prompt_ids[start + 1 : start + 1 + len(chunk)]
            logits = self.model(mx.array(chunk)[None], cache=cache)[0]
            if targets:
                out.extend(_scored(mx, logits[: len(targets)], targets, top))
            mx.eval([c.state for c in cache])
        self.prompt_cache.store(adapter, list(prompt_ids), cache)
        return out

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        mx = self._mx
        room = self._context - len(prompt_ids)
        limit = min(params.max_tokens, room)
        if limit <= 0 or not prompt_ids:
            return
        sampler, processors = request_sampling(mx, params)
        adapter = job_state().get(_ADAPTER, self._adapter_key)
        if self._speculator is not None:
            alone = self._speculator.open(prompt_ids, adapter, sampler, processors, limit)
            yield from _emit(mx, alone.cached, alone.tokens(), params.top_logprobs, should_stop)
            return
        sequence = self._scheduler.open(prompt_ids, adapter, sampler, processors, limit)
        try:
            if self.max_batch_size > 1:
                # let requests that arrived with this one join before the first step
                yield PAUSE
            steps = iter(lambda: self._scheduler.next(sequence), None)
            yield from _emit(mx, sequence.cached, steps, params.top_logprobs, should_stop)
        finally:
            self._scheduler.close(sequence)


def _emit(
    mx: Any,
    cached: int | None,
    steps: Iterator[tuple[int, Any] | None],
    top: int | None,
    should_stop: ShouldStop,
) -> Iterator[Sampled]:
    """The (token, logprobs) steps as `Sampled`s, the first one with `cached`; ends
    when `should_stop()` turns true after a token (closing `steps`)."""
    try:
        for step in steps:
            assert step is not None
            token, logprobs = step
            sampled = _sampled(mx, token, logprobs, top)
            if cached is not None:
                sampled = replace(sampled, cached_tokens=cached)
                cached = None
            yield sampled
            if should_stop():
                return
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()


def request_sampling(mx: Any, params: GenerationParams) -> tuple[Any, list[Any]]:
    """A request's sampler (seeded: its own seed, else a fresh one) and its logits
    processors (penalties and logit_bias, then the grammar's mask)."""
    processors = _penalties(mx, params)
    if params.constraint is not None:
        # last: the mask has the final word on which ids may be sampled
        processors.append(_masker(mx, params.constraint()))
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    return make_sampler(mx, params.temperature, params.top_p, seed, params.top_k), processors


def _penalties(mx: Any, params: GenerationParams) -> list[Any]:
    """OpenAI's logit_bias and presence/frequency penalties as mlx logits processors.

    OpenAI counts only sampled tokens for the penalties, so the prompt is skipped
    (mlx-lm's own processors look at a window that includes the prompt). Processors
    are called once per step; from the second call on, the last token they are given
    is the one sampled at the step before (in `generate_step` and in batches alike,
    whatever part of the prompt came from the prompt cache).
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
        generated: list[int] = []
        calls = 0

        def penalize(tokens: Any, logits: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 1:
                generated.append(int(tokens[-1].item()))
            if not generated:
                return logits
            ids = mx.array(generated)
            counts = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[ids].add(1.0)
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


def _scored(mx: Any, logits: Any, targets: list[int], top: int) -> list[Sampled]:
    """`targets[i]` with its logprob and `top` best alternatives under `logits[i]`.

    float32 whatever the weights' dtype: a bf16 log-softmax is off by ~0.01.
    """
    logits = logits.astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    own = mx.take_along_axis(logprobs, mx.array(targets)[:, None], axis=-1)[:, 0]
    if top <= 0:
        return [Sampled(t, lp) for t, lp in zip(targets, own.tolist(), strict=True)]
    k = min(top, logprobs.shape[-1])
    if k == 1:  # lm-evaluation-harness's case: an argmax is ~5x faster on the CPU
        ids = mx.argmax(logprobs, axis=-1, keepdims=True)
    else:
        ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
    values = mx.take_along_axis(logprobs, ids, axis=-1)
    rows = zip(targets, own.tolist(), ids.tolist(), values.tolist(), strict=True)
    return [
        Sampled(t, lp, tuple(sorted(zip(i, v, strict=True), key=lambda p: -p[1])))
        for t, lp, i, v in rows
    ]


def _masker(mx: Any, constraint: TokenConstraint) -> Any:
    """A logits processor that keeps only the ids the constraint allows next.

    From its second call on, the last token it is given was sampled at the step
    before: the constraint consumes it first.
    """
    calls = 0

    def mask(tokens: Any, logits: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            constraint.advance(int(tokens[-1].item()))
        allowed = mx.array(constraint.allowed(logits.shape[-1]))
        return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))

    return mask


def _context_length(model_path: Path) -> int:
    import json

    config = json.loads((model_path / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)
