"""llama.cpp's context and batch as the batched GGUF engine uses them.

One context holds the keys and values of every sequence, each in its own stream of the
cache (`kv_unified` off, llama-server's default with `-np N`). A unified cache would let
a long sequence use the cells idle ones leave, but there a sequence's logits depend on
what the others hold (measured on the embedded Q4_1 model: up to 1.2 apart for the same
prompt with and without another sequence's 199 tokens in the cache; 0.0 with streams),
and each row attends over every sequence's cells. A `Rows` is a reusable `llama_batch`:
each row is a token at a position of one sequence, with or without its logits.
"""

from __future__ import annotations

import contextlib
from typing import Any

#: most rows one `llama_decode` takes (llama.cpp's `n_batch`); a step's decode rows come
#: first, prompt slices fill the rest
MAX_ROWS = 512


def new_context(llama: Any, positions: int, sequences: int) -> None:
    """Give `llama` (a llama_cpp.Llama) a fresh context: `sequences` streams of
    `positions` each. The old context is freed first (its cache is lost)."""
    from llama_cpp import _internals

    llama._ctx.close()  # free the old cache before allocating the new one
    params = llama.context_params
    params.n_ctx = positions * sequences
    params.n_seq_max = sequences
    params.kv_unified = False
    params.n_batch = params.n_ubatch = MAX_ROWS
    llama._ctx = llama._stack.enter_context(
        contextlib.closing(
            _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        )
    )
    llama._n_ctx = positions * sequences
    llama.n_tokens = 0  # the high-level Llama API's own view of sequence 0: unused here


class Rows:
    """A llama_batch filled row by row, decoded, then cleared for the next step."""

    def __init__(self, capacity: int = MAX_ROWS) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.capacity = capacity
        self._batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def room(self) -> int:
        """Rows still free in this step."""
        return self.capacity - self.count

    def add(self, token: int, position: int, sequence: int, logits: bool) -> int:
        """Append a row; returns its index (where its logits are read after `decode`)."""
        batch, row = self._batch, self.count
        batch.token[row] = token
        batch.pos[row] = position
        batch.n_seq_id[row] = 1
        batch.seq_id[row][0] = sequence
        batch.logits[row] = logits
        self.count += 1
        return row

    def decode(self, ctx: Any) -> int:
        """Run the rows through the model: 0 done, 1 no room in the cache, else failed."""
        self._batch.n_tokens = self.count
        return int(self._lib.llama_decode(ctx, self._batch))

    def clear(self) -> None:
        """Forget the rows (the next step fills the batch again)."""
        self.count = 0

    def close(self) -> None:
        """Free the batch's buffers."""
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None


class RowLogits:
    """One row's float32 logits, in llama.cpp's own buffer: read (and change, as the
    sampler does in place) before the next decode, which writes over them.

    No copy: a copy a token of the vocabulary's logits (600 KB for Qwen2.5's 151,936 ids)
    is time between two decodes that llama-server does not spend. The numpy view of each
    row's address is kept: the buffer stays where it is from one decode to the next, and
    `np.ctypeslib.as_array` (a ctypes array type made a call) took ~55 µs between two
    decodes, timed in the runner, where a cached view's lookup takes a few.
    """

    #: views kept at most (a context has at most MAX_ROWS output rows; a new buffer after
    #: a bigger batch or a new context moves them all)
    _KEPT = 4 * MAX_ROWS

    def __init__(self, vocab: int) -> None:
        import ctypes

        import llama_cpp

        self._vocab = vocab
        self._logits_ith = llama_cpp.llama_get_logits_ith
        self._cast, self._void_p = ctypes.cast, ctypes.c_void_p
        self._views: dict[int, Any] = {}

    def __call__(self, ctx: Any, row: int) -> Any:
        """The logits of batch row `row` of the last decode on `ctx`."""
        pointer = self._logits_ith(ctx, row)
        address = self._cast(pointer, self._void_p).value
        view = self._views.get(address)  # type: ignore[arg-type]
        if view is None:
            import numpy as np

            if len(self._views) >= self._KEPT:
                self._views.clear()
            view = np.ctypeslib.as_array(pointer, shape=(self._vocab,))
            self._views[address] = view  # type: ignore[index]
        return view


class Memory:
    """The per-sequence operations on the context's cache."""

    def __init__(self, ctx: Any) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._memory = llama_cpp.llama_get_memory(ctx)

    def drop(self, sequence: int, start: int = 0) -> bool:
        """Forget `sequence`'s positions from `start` on; False if llama.cpp cannot."""
        return bool(self._lib.llama_memory_seq_rm(self._memory, sequence, start, -1))

    def copy(self, source: int, target: int, length: int) -> None:
        """Give `target` a copy of `source`'s first `length` positions.

        Across streams llama.cpp copies only whole streams (at its next decode): the
        rest is dropped after.
        """
        self._lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)
        self.drop(target, length)

    def clear(self) -> None:
        """Forget every sequence."""
        self._lib.llama_memory_clear(self._memory, True)
