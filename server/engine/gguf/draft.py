"""A draft model for speculative decoding on the GGUF engine.

A smaller GGUF of the same family (the same vocabulary, e.g. Qwen2.5-0.5B drafting for
Qwen2.5-7B) proposes the next tokens greedily; the served model verifies them in its own
batched step (`batching`). The draft model keeps a stream of its cache per slot, like the
served one, and each time reads only what it has not seen of a sequence: the tokens
confirmed since its last draft. Its drafts of all decoding sequences are made together,
one draft-model step per drafted position.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from server.engine.gguf.batching import DraftRequest
from server.engine.gguf.rows import MAX_ROWS, Memory, RowLogits, Rows, new_context
from server.engine.gguf.slots import common_prefix
from server.errors import ModelLoadError

log = logging.getLogger(__name__)

#: ids compared between the two vocabularies (spread over the whole range)
_VOCAB_PROBES = 64


class DraftModel:
    """A GGUF model that drafts for a served one with the same vocabulary."""

    def __init__(
        self, gguf_file: Path, target: Any, slots: int, threads: int, context: int
    ) -> None:
        """Load `gguf_file`; `target` is the served model's llama_cpp.Llama, `context`
        the most positions it holds for one sequence (the draft never needs more).

        Raises:
            ModelLoadError: not a GGUF llama.cpp reads, or another vocabulary.
        """
        from llama_cpp import Llama

        from server.engine.gguf.backend import check_gguf

        check_gguf(gguf_file)
        try:
            self.llama = Llama(
                model_path=str(gguf_file),
                n_ctx=256 * slots,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=-1,
                use_mmap=True,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load the draft model {gguf_file.name}"
            ) from exc
        _check_vocabulary(self.llama, target, gguf_file.name)
        self._slots = slots
        self._logits = RowLogits(self.llama.n_vocab())
        self._target_vocab = int(target.n_vocab())
        self._context = min(int(self.llama._model.n_ctx_train()), context)
        new_context(self.llama, 256, slots)
        self._memory = Memory(self.llama.ctx)
        self._rows = Rows(MAX_ROWS)
        #: the tokens each slot's stream of the draft cache holds, from position 0
        self._held: list[list[int]] = [[] for _ in range(slots)]
        self.name = gguf_file.name

    def __call__(self, requests: list[DraftRequest]) -> list[list[int]]:
        """Greedy drafts of up to `size` tokens after each request's history."""
        longest = max(len(history) + size for _, history, size in requests)
        if longest > self._stream():
            if longest > self._context:
                return [[] for _ in requests]
            self._grow(longest)
        # read what each stream lacks of its history; the last token's row gives draft 1
        drafts: list[list[int]] = [[] for _ in requests]
        feeds: dict[int, tuple[int, int]] = {}  # request -> (token, position) to read next
        pending: list[tuple[int, int, int, int]] = []  # (request, token, position, wants logits)
        for index, (slot, history, _size) in enumerate(requests):
            held = self._held[slot]
            keep = common_prefix(held, history[:-1])
            if keep < len(held):
                self._memory.drop(slot, keep)
                del held[keep:]
            for position in range(keep, len(history)):
                pending.append((index, history[position], position, position == len(history) - 1))
        while pending or feeds:
            if not pending:
                pending = [(i, token, pos, True) for i, (token, pos) in feeds.items()]
                feeds = {}
            batch, pending = pending[:MAX_ROWS], pending[MAX_ROWS:]
            picked = self._decode(requests, batch)
            if picked is None:
                break  # the draft cache was reset: no more drafting this step
            for index, token in picked.items():
                if token >= self._target_vocab:
                    continue  # an id the served model does not have: the draft ends
                _slot, history, size = requests[index]
                drafts[index].append(token)
                if len(drafts[index]) < size:
                    feeds[index] = (token, len(history) + len(drafts[index]) - 1)
        return drafts

    def _decode(
        self, requests: list[DraftRequest], batch: list[tuple[int, int, int, int]]
    ) -> dict[int, int] | None:
        """Decode the rows; the greedy next token of each request that wanted logits
        (None: llama.cpp refused the batch, and the draft cache starts afresh)."""
        rows = self._rows
        rows.clear()
        wanted: dict[int, int] = {}
        for index, token, position, logits in batch:
            slot = requests[index][0]
            row = rows.add(token, position, slot, bool(logits))
            self._held[slot].append(token)
            if logits:
                wanted[index] = row
        if rows.decode(self.llama.ctx) != 0:
            self._forget()
            return None
        return {
            index: int(self._logits(self.llama.ctx, row).argmax()) for index, row in wanted.items()
        }

    def _stream(self) -> int:
        return int(self.llama.n_ctx()) // self._slots

    def _grow(self, positions: int) -> None:
        # room for twice what is needed now: a new context loses the cache, and each loss
        # means reading every stream's history again (a 409-token prompt twice over)
        size = self._stream()
        while size < 2 * positions:
            size *= 2
        new_context(self.llama, min(size, self._context), self._slots)
        self._memory = Memory(self.llama.ctx)
        self._held = [[] for _ in range(self._slots)]

    def _forget(self) -> None:
        self._memory.clear()
        self._held = [[] for _ in range(self._slots)]


def _check_vocabulary(draft: Any, target: Any, name: str) -> None:
    """Refuse a draft model whose token ids mean other text than the served model's."""
    n = target.n_vocab()
    if draft.n_vocab() < n - 512 or draft.n_vocab() > n + 512:
        raise ModelLoadError(
            f"the draft model {name} has {draft.n_vocab()} tokens, the served model {n}: "
            "a draft model must share the served model's vocabulary (the same family)"
        )
    step = max(1, min(n, draft.n_vocab()) // _VOCAB_PROBES)
    for token in range(0, min(n, draft.n_vocab()), step):
        if draft.detokenize([token]) != target.detokenize([token]):
            raise ModelLoadError(
                f"the draft model {name} reads token {token} as other text than the served "
                "model: a draft model must share the served model's vocabulary"
            )
