"""Continuous batching of GGUF token streams on one llama.cpp context.

Every open completion holds a slot: one of llama.cpp's sequence ids, with its own
stream of the cache (`rows.new_context`). A consumer that wants its next token takes it
from its sequence's buffer; when the buffer is empty it runs one step, which decodes one
token for every decoding sequence of its adapter and feeds a slice of the prompts being
read (decode rows first, prompt slices fill the rest of the batch, so a long prompt
never stalls the others for more than one slice). Each sequence samples its own row
with its own sampler (seed, penalties, bias, grammar, logprobs).

A finished sequence leaves its cache behind in its slot: a new prompt takes the idle
slot with the longest common prefix, or copies that prefix from any slot (busy or idle)
into a free one. The slot also keeps the logits its prompt's last row gave, so the same
prompt again samples its first token from them without a step: the same first token as
the first time, at no cost (`Slot.kept`). When a sequence outgrows its stream, the
context grows (each stream doubles, up to the model's context) and every open sequence
reads its tokens again.

All methods run on the engine's worker thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from server.engine.base import PAUSE, Sampled
from server.engine.gguf.rows import MAX_ROWS, Memory, RowLogits, Rows
from server.engine.gguf.slots import Sequence, Slot, common_prefix, runs
from server.engine.lookup import lookup_draft
from server.engine.sampling import CompletionSampler

log = logging.getLogger(__name__)

#: prompt tokens one sequence reads per step at most: bounds the pause a long prompt
#: causes to the streams already decoding
PREFILL_STEP = 256


#: the shortest cached prefix worth copying from another slot (llama.cpp copies whole
#: streams across slots: for a few tokens, reading them again costs less)
COPY_MIN = 16

#: what a drafter is asked for each sequence: its slot, its tokens so far, how many to draft
DraftRequest = tuple[int, list[int], int]
#: proposes a draft for each request, in order (fewer tokens than asked is fine)
Drafter = Callable[[list[DraftRequest]], list[list[int]]]


def _lookup(requests: list[DraftRequest]) -> list[list[int]]:
    """Prompt lookup: each sequence drafts from its own earlier tokens."""
    return [lookup_draft(history, size) for _, history, size in requests]


#: a decode row to sample: the sequence, its first row, the tokens drafted after it
Planned = tuple[Sequence, int, list[int]]


class GGUFBatcher:
    """The open sequences of one GGUF model, decoded together step by step."""

    def __init__(
        self,
        llama: Any,
        slots: int,
        vocab: int,
        grow: Callable[[int], bool],
        apply_adapter: Callable[[str], None],
        draft_tokens: int = 0,
        drafter: Drafter | None = None,
    ) -> None:
        """`grow(positions)` makes a context whose streams hold that many positions each
        (False: past the model's context); `apply_adapter(key)` switches the LoRA adapter.
        `draft_tokens` > 0 turns speculation on, up to that many drafted tokens a step,
        drafted by `drafter` (prompt lookup when None)."""
        self._llama = llama
        self._logits = RowLogits(vocab)
        self._grow = grow
        self._apply_adapter = apply_adapter
        self._slots = [Slot(i) for i in range(slots)]
        self._open: list[Sequence] = []
        self._rows = Rows(MAX_ROWS)
        self._clock = itertools.count(1)
        self.memory = Memory(llama.ctx)
        #: `stream_cells`, read once a context (a ctypes call through llama_cpp's wrapper
        #: every step showed in the profile of one stream's step)
        self._cells = int(llama.n_ctx()) // slots
        self._draft_tokens = draft_tokens
        self._drafter: Drafter = drafter or _lookup
        #: the most sequences one step has decoded together so far
        self.largest_batch = 0
        #: tokens proposed by prompt lookup, and how many of them the model confirmed
        self.drafted = self.accepted = 0

    @property
    def active(self) -> int:
        """Open sequences (decoding, reading their prompt or waiting for a slot)."""
        return len(self._open)

    def reset(self) -> None:
        """The context was replaced: no slot holds anything; open sequences read again."""
        self.memory = Memory(self._llama.ctx)
        self._cells = int(self._llama.n_ctx()) // len(self._slots)
        for slot in self._slots:
            self._invalidate(slot)

    def open(
        self, prompt: list[int], adapter: str, sampler: CompletionSampler, budget: int
    ) -> Sequence:
        """Queue a completion of `prompt`; it reads its prompt at the next step."""
        sequence = Sequence(next(self._clock), adapter, prompt, sampler, budget)
        sequence.feed = prompt[-1]
        self._open.append(sequence)
        self._seat(sequence)
        return sequence

    def next(self, sequence: Sequence) -> Sampled | None:
        """The sequence's next token; None once it made its last one; PAUSE while it
        waits for a slot that only another stream's consumer can free."""
        if sequence.first is not None:
            logits, sequence.first = sequence.first.copy(), None  # the sampler writes in it
            self._emit(sequence, logits)
        while not sequence.ready:
            if sequence.error is not None:
                raise sequence.error
            if sequence.finished:
                return None
            if sequence.slot is None and not any(runs(s) for s in self._open):
                return PAUSE
            self._step(sequence)
        return sequence.ready.popleft()

    def close(self, sequence: Sequence) -> None:
        """Take the sequence out; its slot keeps the cache for later prompts."""
        if sequence in self._open:
            self._open.remove(sequence)
        slot = sequence.slot
        if slot is not None and slot.owner is sequence:
            slot.owner = None
            slot.used = next(self._clock)
        for waiting in self._open:
            if waiting.slot is None:
                self._seat(waiting)

    def take_slot(self, adapter: str) -> Slot:
        """An idle slot emptied for one-off use (prompt scoring), least recently used."""
        free = [s for s in self._slots if s.owner is None]
        if not free:
            raise RuntimeError("every sequence slot of the model is busy; try again")
        slot = min(free, key=lambda s: s.used)
        self.memory.drop(slot.seq_id)
        slot.truncate(0)
        slot.adapter, slot.used = adapter, next(self._clock)
        return slot

    def stream_cells(self) -> int:
        """Positions each sequence's stream of the cache holds now."""
        return self._cells

    # -- slots -------------------------------------------------------------------

    def _seat(self, sequence: Sequence) -> None:
        """Give the sequence the free slot of lowest id, with the longest cached prefix
        of its prompt copied in from whichever slot holds it.

        Low ids first: llama.cpp computes a step's attention over every stream from the
        lowest to the highest sequence id in the batch, idle ones between included
        (measured: 8 streams decoding in slots spread over 16 took 69 ms a step, in
        slots 0-7 40 ms), so the open sequences are kept together at the bottom.
        """
        free = [s for s in self._slots if s.owner is None]
        if not free:
            return  # it waits for a sequence to close
        target = min(free, key=lambda s: s.seq_id)
        prompt = sequence.prompt
        head = prompt[:-1]  # the last prompt token is fed for its logits, unless kept
        best, shared = target, 0
        for slot in self._slots:
            if slot.adapter != sequence.adapter:
                continue
            n = common_prefix(slot.tokens, head)
            if n > shared or (n == shared and slot is target):
                best, shared = slot, n
        kept = best.kept
        if (
            kept is not None
            and best.adapter == sequence.adapter  # `target` is the default, of any adapter
            and kept[0] == len(prompt)
            and shared == len(head)
            and best.tokens[len(head)] == prompt[-1]
        ):  # the same prompt again, all of it cached
            shared, sequence.first = len(prompt), kept[1]
        if best is target:
            if not self.memory.drop(target.seq_id, shared):
                self.memory.drop(target.seq_id)
                shared, sequence.first = 0, None
            target.truncate(shared)
        else:
            self.memory.drop(target.seq_id)
            target.truncate(0)
            if shared >= COPY_MIN:
                self.memory.copy(best.seq_id, target.seq_id, shared)
                target.tokens = best.tokens[:shared]
                if sequence.first is not None:
                    target.kept = kept
                log.debug("prompt prefix of %d tokens copied from slot %d", shared, best.seq_id)
            else:
                shared, sequence.first = 0, None
        target.adapter, target.owner, target.used = sequence.adapter, sequence, next(self._clock)
        sequence.slot = target
        sequence.cached = shared
        sequence.keep = sequence.first is None
        sequence.todo = head[shared:]

    def _invalidate(self, slot: Slot) -> None:
        """Forget the slot's cache; its sequence, if any, reads its tokens again."""
        owner = slot.owner
        if owner is not None:
            if owner.first is not None:  # its prompt is all in the slot: read it again
                owner.first, owner.keep = None, True
                owner.todo = slot.tokens[:-1]
            else:
                owner.todo = slot.tokens + owner.todo
        self.memory.drop(slot.seq_id)
        slot.truncate(0)

    # -- steps -------------------------------------------------------------------

    def _step(self, asking: Sequence) -> None:
        """One llama_decode for the open sequences of `asking`'s adapter."""
        adapter = asking.adapter
        if asking.slot is None:
            # it waits for a slot: run the sequences that hold them
            adapter = next(s.adapter for s in self._open if runs(s))
        group = [s for s in self._open if s.adapter == adapter and runs(s)]
        self._apply_adapter(adapter)
        try:
            planned = self._plan(group, asking)
            while planned is None:  # the cache changed under the plan: plan again
                planned = self._plan(group, asking)
        except RuntimeError as exc:
            self._fail(group, exc)
            return
        self.largest_batch = max(self.largest_batch, len(planned))
        rc = self._rows.decode(self._llama.ctx)
        if rc != 0:
            self._fail(group, RuntimeError(f"llama.cpp could not decode a batch (code {rc})"))
            return
        for sequence, row, drafts in planned:
            self._sample(sequence, row, drafts)

    def _plan(self, group: list[Sequence], asking: Sequence) -> list[Planned] | None:
        """Fill the batch: each decoding sequence's token (and its draft), then prompt
        slices, oldest first. Returns (sequence, first row, draft) for the rows whose
        logits are sampled (none when the step only reads prompts); None when the
        cache had to change first."""
        rows = self._rows
        rows.clear()
        ready = [s for s in group if not s.todo]
        reading = sorted((s for s in group if s.todo), key=lambda s: s.order)
        stream = self.stream_cells()
        for sequence in ready:
            if not self._fits(sequence, 1, stream):
                return None
        planned: list[Planned] = []
        for sequence, drafts in zip(ready, self._drafts(ready, stream), strict=True):
            last = self._add(sequence, [sequence.feed, *drafts], logits=True)
            planned.append((sequence, last - len(drafts), drafts))
        # 256-token slices even for a lone prompt: measured on the embedded Q4_1 model, a
        # 1,000-token prompt read in 512-row calls took 3.61 s against 3.52 s in 256-row
        # ones (median of 4, alternated)
        for sequence in reading:
            take = min(len(sequence.todo), PREFILL_STEP, rows.room - 1)
            if take <= 0:
                break
            if not self._fits(sequence, take + 1, stream):
                return None
            chunk, sequence.todo = sequence.todo[:take], sequence.todo[take:]
            self._add(sequence, chunk, logits=False)
            if not sequence.todo:
                # the prompt's last token ends its last slice, as on llama-server: a step of
                # its own cost a lone stream's first token 12-15 ms. llama.cpp's logits for
                # that row differ from a one-row step's (by up to ~0.5 on the Q4_1 model),
                # so the slot keeps them: the same prompt again samples from them.
                planned.append((sequence, self._add(sequence, [sequence.feed], logits=True), []))
        return planned

    def _drafts(self, ready: list[Sequence], stream: int) -> list[list[int]]:
        """The tokens the drafter proposes after each decoding sequence's feed (none
        when speculation is off, paused for the sequence, or out of room)."""
        if not self._draft_tokens:
            return [[] for _ in ready]
        free = self._rows.room - len(ready)  # one row each for their feeds
        asks: list[DraftRequest] = []
        for sequence in ready:
            slot = sequence.slot
            assert slot is not None
            size = min(self._draft_tokens, sequence.sizer.allowed(), free)
            size = min(size, sequence.budget - 1, stream - len(slot.tokens) - 1)
            free -= max(0, size)
            asks.append((slot.seq_id, [*slot.tokens, sequence.feed], max(0, size)))
        wanted = [a for a in asks if a[2]]
        proposed = iter(self._drafter(wanted) if wanted else [])
        return [next(proposed)[:size] if size else [] for _, _, size in asks]

    def _fits(self, sequence: Sequence, rows: int, stream: int) -> bool:
        """Whether the sequence's stream holds `rows` more; if not, grow the context
        (every sequence then reads again: plan anew) or fail."""
        slot = sequence.slot
        assert slot is not None
        needed = len(slot.tokens) + rows
        if needed <= stream:
            return True
        # room for the whole prompt at once, so a long one grows the context only once
        if not self._grow(max(needed, len(slot.tokens) + len(sequence.todo) + 1)):
            raise RuntimeError("the sequence is longer than the model's context")
        self.reset()
        return False

    def _add(self, sequence: Sequence, tokens: list[int], *, logits: bool) -> int:
        """Rows for `tokens` at the sequence's next positions; the last row's index."""
        slot = sequence.slot
        assert slot is not None
        row = -1
        for token in tokens:
            row = self._rows.add(token, len(slot.tokens), slot.seq_id, logits)
            slot.tokens.append(token)
        return row

    def _sample(self, sequence: Sequence, first: int, drafts: list[int]) -> None:
        """Sample the sequence's next token from its row; with a draft, go on while the
        sampled token is the drafted one (its row saw exactly what a plain step would),
        then forget the cache of the drafted tokens the model did not confirm."""
        ctx = self._llama.ctx
        slot = sequence.slot
        assert slot is not None
        if sequence.keep:  # its prompt's last row: kept for the same prompt again
            sequence.keep = False
            slot.kept = (len(sequence.prompt), self._logits(ctx, first).copy())
        matched = 0
        for i in range(len(drafts) + 1):
            token = self._emit(sequence, self._logits(ctx, first + i))
            if token is None:
                break
            if i < len(drafts) and token == drafts[i]:
                matched += 1
                continue
            break
        if drafts:
            self._judge(sequence, len(drafts), matched)
            unconfirmed = len(drafts) - matched
            if unconfirmed:
                slot.truncate(len(slot.tokens) - unconfirmed)
                self.memory.drop(slot.seq_id, len(slot.tokens))

    def _emit(self, sequence: Sequence, logits: Any) -> int | None:
        """Sample the sequence's next token from `logits` into its buffer; None when it
        was its last (never fed), else the token, for the caller to feed or check."""
        out = sequence.sampler.next(logits)
        sequence.sampler.accept(out.token)
        sequence.ready.append(out)
        sequence.budget -= 1
        if sequence.budget <= 0:
            sequence.finished = True
            return None
        sequence.feed = out.token
        return out.token

    def _judge(self, sequence: Sequence, drafted: int, matched: int) -> None:
        """Count a verified draft and size the sequence's next one (`DraftSizer`)."""
        self.drafted += drafted
        self.accepted += matched
        sequence.sizer.judge(drafted, matched)

    def _fail(self, group: list[Sequence], error: BaseException) -> None:
        """A decode failed: the cache's state is unknown, so every slot starts afresh."""
        for sequence in group:
            sequence.error = error
        self.memory.clear()
        for slot in self._slots:
            self._invalidate(slot)  # the sequences of other adapters read their tokens again
