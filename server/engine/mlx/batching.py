"""Continuous batching of MLX token streams, driven by the streams' consumers.

Every open sequence belongs to one mlx-lm `BatchGenerator` per adapter (a batch never
mixes adapters: the LoRA weights are switched for the whole forward pass). A consumer
that wants its next token takes it from its sequence's buffer; when the buffer is
empty it runs one step of its group's batch, which decodes one token for every
sequence of the batch (and prefills the ones that just joined). The worker thread
interleaves the consumers, so new requests join a running batch at its next step and
finished ones leave it, each with its own sampler, logits processors and limits.

All methods run on the engine's worker thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.engine.mlx.prompt_cache import PromptCache

#: prompt tokens read per step for sequences being prefilled: bounds the pause a long
#: new prompt causes to the streams already decoding
PREFILL_STEP = 512


class _Group:
    """The batch of one adapter: its generator and the sequences it runs."""

    def __init__(self, key: str, generator: Any) -> None:
        self.key = key
        self.generator = generator
        self.sequences: dict[int, Sequence] = {}


@dataclass
class Sequence:
    """One completion in a batch: where its tokens wait for their consumer."""

    uid: int
    batch: _Group
    prompt: list[int]
    #: prompt tokens that came from the prompt cache
    cached: int
    #: (token id, its logprob vector) not yet taken by the consumer
    ready: deque[tuple[int, Any]] = field(default_factory=deque)
    #: the batch produced its last token (limit reached); the buffer may still hold some
    finished: bool = False
    #: a step of this sequence's batch failed
    error: BaseException | None = None


class BatchScheduler:
    """Runs the open sequences of one model in continuous batches, one per adapter."""

    def __init__(
        self,
        model: Any,
        activate: Callable[[str], None],
        prompt_cache: PromptCache,
        max_batch_size: int,
    ) -> None:
        self._model = model
        self._activate = activate
        self._cache = prompt_cache
        self._max_batch = max(1, max_batch_size)
        self._groups: dict[str, _Group] = {}
        #: the most sequences one step has decoded together so far
        self.largest_batch = 0

    def open(
        self,
        prompt: list[int],
        group: str,
        sampler: Callable[[Any], Any],
        processors: list[Any],
        max_tokens: int,
    ) -> Sequence:
        """Queue a sequence; it joins its group's batch at that batch's next step.

        `group` names the adapter, "" for the bare base (the prompt cache's key too:
        the keys and values depend on the weights).
        """
        from mlx_lm.generate import StopSequences

        hit = self._cache.fetch(group, prompt)
        batch = self._group(group)
        (uid,) = batch.generator.insert(
            [hit.rest],
            max_tokens=[max(1, max_tokens)],
            caches=[hit.cache] if hit.cache is not None else None,
            all_tokens=[prompt[: hit.cached]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[StopSequences()],
        )
        sequence = Sequence(uid, batch, prompt, hit.cached)
        batch.sequences[uid] = sequence
        return sequence

    def next(self, sequence: Sequence) -> tuple[int, Any] | None:
        """The sequence's next (token, logprobs); None once its batch gave the last one."""
        while not sequence.ready:
            if sequence.error is not None:
                raise sequence.error
            if sequence.finished:
                return None
            self._step(sequence.batch)
        return sequence.ready.popleft()

    def close(self, sequence: Sequence) -> None:
        """Take the sequence out of its batch and keep its KV cache for later prompts."""
        batch = sequence.batch
        if batch.sequences.pop(sequence.uid, None) is None:
            return
        if not sequence.finished and sequence.error is None:
            caches = batch.generator.remove([sequence.uid], return_prompt_caches=True)
            if sequence.uid in caches:
                cache, tokens = caches[sequence.uid]
                self._cache.store(batch.key, tokens, cache)
        if batch.key and not batch.sequences and self._groups.get(batch.key) is batch:
            # an adapter's batch goes once idle; the base model's stays (an empty batch
            # holds no KV, and making one per request would cost a little each time)
            batch.generator.close()
            del self._groups[batch.key]

    @property
    def active(self) -> int:
        """Open sequences across all batches."""
        return sum(len(g.sequences) for g in self._groups.values())

    def _group(self, key: str) -> _Group:
        batch = self._groups.get(key)
        if batch is None:
            from mlx_lm.generate import BatchGenerator

            generator = BatchGenerator(
                self._model,
                completion_batch_size=self._max_batch,
                prefill_batch_size=min(self._max_batch, 8),
                prefill_step_size=PREFILL_STEP,
            )
            batch = self._groups[key] = _Group(key, generator)
        return batch

    def _step(self, batch: _Group) -> None:
        """One step of `batch`: a token for each decoding sequence, a prefill chunk."""
        key = batch.key
        self._activate(key)
        self.largest_batch = max(self.largest_batch, len(batch.sequences))
        try:
            _prompts, responses = batch.generator.next()
        except Exception as exc:
            # the batch's state is unknown now: fail all of its sequences, start afresh
            for failed in batch.sequences.values():
                failed.error = exc
            if self._groups.get(key) is batch:
                del self._groups[key]
            raise
        for response in responses:
            owner = batch.sequences.get(response.uid)
            if owner is None:
                continue
            owner.ready.append((int(response.token), response.logprobs))
            if response.finish_reason is not None:
                owner.finished = True
                if response.prompt_cache is not None and response.all_tokens is not None:
                    self._cache.store(key, response.all_tokens, response.prompt_cache)
