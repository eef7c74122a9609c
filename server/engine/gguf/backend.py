"""GGUF engine (llama.cpp through llama-cpp-python): the fastest path on CPU-only machines.

It serves a GGUF file as is (the embedded model's Q4_1 file included, no conversion). The
decode loop is our own over llama-cpp-python's low-level bindings: concurrent requests
decode together in one llama.cpp context, one sequence id each (`batching`), and the CPU
sampler (`server.engine.sampling`, shared with the torch engine) samples each row with
the same rules as the other engines (logit_bias, OpenAI penalties, the per-step
constraint mask, logprobs). The cache of a finished request stays in its slot: a prompt
that starts like an earlier one only evaluates what differs. LoRA adapters are
converted to GGUF LoRA files once and switched per step with llama.cpp's adapter API.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.engine.base import PAUSE, Engine, GenerationParams, Sampled, ShouldStop
from server.engine.gguf.adapters import GGUFAdapters
from server.engine.gguf.batching import GGUFBatcher
from server.engine.gguf.rows import Rows, new_context
from server.engine.gguf.tokenizer import gguf_tokenizer
from server.engine.templates import end_of_turn_ids
from server.engine.worker import job_state

if TYPE_CHECKING:
    from server.engine.gguf.draft import DraftModel
from server.errors import ModelLoadError

log = logging.getLogger(__name__)

#: the context is the model's trained one, up to this many positions unless the model's
#: own `context` setting (`pomar models set ID context=N`) asks for more
MAX_CONTEXT = 8192
#: positions llama.cpp's KV cache is allocated for at load, shared out between the
#: sequences (at least 256 each); a sequence that needs more grows every sequence's share
#: (doubling, up to the context). llama.cpp writes the whole cache when it allocates it,
#: so a full 8192-position cache is resident from the start (180 MB for the embedded model,
#: plus a compute buffer that grows with it), which most requests never use.
INITIAL_CONTEXT = 2048
#: the least positions each sequence's stream of the cache starts with
MIN_STREAM = 256
#: the job-state key of the adapter a job's streams use
_ADAPTER = "gguf.adapter"


def physical_cores() -> int:
    """Physical cores this process may run on (llama.cpp gains nothing from SMT siblings)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        physical = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        physical = min(physical, len(os.sched_getaffinity(0)))
    return max(1, physical)


@dataclass(frozen=True)
class GGUFHeader:
    """What the engine reads from a GGUF's header before loading it."""

    #: the context length the model was trained with (2048 when the file does not say)
    context_length: int
    #: llama.cpp's ``general.file_type`` (0: every tensor f32), None when absent
    file_type: int | None


def check_gguf(path: Path) -> GGUFHeader:
    """Refuse a file that is not a GGUF model; return what its header says.

    Reads only the header and vocabulary (llama.cpp's vocab-only load, ~0.1 s); damage past
    the header (a truncated download) is caught by the full load that follows.

    Raises:
        ModelLoadError: not a GGUF file, or one llama.cpp cannot read.
    """
    import llama_cpp

    from server.engine.gguf.cpu import ensure_cpu_backend

    try:
        ensure_cpu_backend()  # the portable build's kernels for this CPU, before any load
    except RuntimeError as exc:
        raise ModelLoadError(str(exc)) from exc
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    # llama.cpp's log goes to stderr through this logger: errors only (Llama(verbose=False)
    # sets the same, but only once it is constructed)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelLoadError(_CORRUPT.format(path=path))
    try:
        # a vocab-only load leaves the hyperparameters unread: take the key from the header
        arch = _meta_value(model, "general.architecture")
        trained = _meta_value(model, f"{arch}.context_length") if arch else None
        file_type = _meta_value(model, "general.file_type")
        return GGUFHeader(
            context_length=int(trained) if trained and trained.isdigit() else 2048,
            file_type=int(file_type) if file_type and file_type.isdigit() else None,
        )
    finally:
        llama_cpp.llama_model_free(model)


def _meta_value(model: Any, key: str) -> str | None:
    import llama_cpp

    buffer = ctypes.create_string_buffer(256)
    size = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, ctypes.sizeof(buffer))
    return buffer.value.decode("utf-8", "replace") if size >= 0 else None


_CORRUPT = (
    "llama.cpp could not load {path}: the file is truncated or corrupt, or holds an "
    "architecture this llama.cpp build does not know"
)


class GGUFEngine(Engine):
    """A GGUF model on llama.cpp: concurrent requests decode together in one context."""

    backend = "gguf"

    def __init__(
        self,
        gguf_file: Path,
        hf_dir: Path | None = None,
        initial_context: int = INITIAL_CONTEXT,
        context: int | None = None,
        max_batch_size: int = 8,
        draft_tokens: int = 0,
        draft_model: Path | None = None,
    ) -> None:
        """Load `gguf_file`; `hf_dir`, when given, is the same model as a Hugging Face folder.

        Up to `max_batch_size` completions decode together, each in its own stream of the
        cache. The cache starts at `initial_context` positions in all and grows on demand;
        one sequence takes at most the model's context: MAX_CONTEXT, or `context` if given.
        `draft_tokens` > 0 turns on speculation: drafts by `draft_model` (a GGUF file of
        the same vocabulary, `server.engine.gguf.draft`) or else by prompt lookup
        (`server.engine.lookup`).

        The folder (the embedded model's import) provides the tokenizer, the sampling defaults
        and the weights fine-tuning jobs train on; without it the tokenizer is read from the
        GGUF by transformers.
        """
        header = check_gguf(gguf_file)
        import llama_cpp
        from llama_cpp import Llama

        self._threads = physical_cores()
        # llama.cpp's KV cache is f16 by default: its rounding moves an f32 model's logits
        # by ~0.005, enough to flip near-ties that MLX and torch (f32 throughout) agree on.
        # An all-f32 file keeps its cache in f32 too; quantized files keep llama.cpp's default.
        kv_type = llama_cpp.GGML_TYPE_F32 if header.file_type == 0 else None  # None: default
        self._context = min(header.context_length, context or MAX_CONTEXT)
        self.max_batch_size = max(1, min(max_batch_size, llama_cpp.llama_max_parallel_sequences()))
        try:
            self.llama = Llama(
                model_path=str(gguf_file),
                n_ctx=min(self._context, initial_context),
                type_k=kv_type,
                type_v=kv_type,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                n_gpu_layers=-1,  # Metal/CUDA builds offload every layer; CPU builds ignore it
                use_mmap=True,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(_CORRUPT.format(path=gguf_file)) from exc
        if kv_type is None:
            # flash attention where llama.cpp has it for the device, as llama-server's
            # default `-fa auto` does: a 989-token prompt is read in 3.58-3.63 s instead of
            # 4.04-4.11 s on the embedded Q4_1 file here (llama-server: 3.52-3.65 s). Not
            # for an all-f32 file: its f32 cache keeps the logits MLX and torch give.
            self.llama.context_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        # the high-level Llama runs one sequence; the batcher needs one cache for many
        stream = max(MIN_STREAM, min(self._context, initial_context) // self.max_batch_size)
        new_context(self.llama, stream, self.max_batch_size)
        self.gguf_file = gguf_file
        self.model_path = str(hf_dir or gguf_file)
        self.tokenizer = gguf_tokenizer(gguf_file, hf_dir, self.llama.metadata)
        ids = set(end_of_turn_ids(self.tokenizer, hf_dir or gguf_file.parent))
        ids.update(t for t in (self.llama.token_eos(), _eot(self.llama)) if t >= 0)
        self.eos_token_ids = frozenset(ids)
        self._vocab = self.llama.n_vocab()
        self._adapters = GGUFAdapters(self.llama, Path(self.model_path), gguf_file.name)
        self._batcher = GGUFBatcher(
            self.llama,
            self.max_batch_size,
            self._vocab,
            self._grow,
            self._adapters.apply,
            draft_tokens=draft_tokens,
            drafter=self._draft_model(draft_model) if draft_tokens else None,
        )
        self._score_rows = Rows()

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def max_concurrency(self) -> int:
        return self.max_batch_size

    @property
    def allocated_context(self) -> int:
        """Positions each sequence's stream of the cache holds now (it grows on demand)."""
        return int(self.llama.n_ctx()) // self.max_batch_size

    @property
    def open_sequences(self) -> int:
        """Completions open now (decoding, reading their prompt or waiting for a slot)."""
        return self._batcher.active

    @property
    def largest_batch(self) -> int:
        """The most completions one decode step has served together so far."""
        return self._batcher.largest_batch

    def _draft_model(self, gguf_file: Path | None) -> DraftModel | None:
        if gguf_file is None:
            return None
        from server.engine.gguf.draft import DraftModel

        draft = DraftModel(gguf_file, self.llama, self.max_batch_size, self._threads, self._context)
        log.info("speculative decoding: %s drafts for %s", draft.name, self.gguf_file.name)
        return draft

    def stats(self) -> dict[str, int]:
        batcher = self._batcher
        return {
            "max_batch_size": self.max_batch_size,
            "open_sequences": batcher.active,
            "largest_batch": batcher.largest_batch,
            "drafted_tokens": batcher.drafted,
            "accepted_tokens": batcher.accepted,
        }

    def _grow(self, positions: int) -> bool:
        """A new context whose streams hold `positions` each (the cache is lost); False
        when the streams cannot grow that far (the model's context)."""
        size = self.allocated_context
        if size >= self._context or positions > self._context:
            return False
        while size < positions:
            size *= 2
        new_context(self.llama, min(size, self._context), self.max_batch_size)
        self._adapters.reapply()
        log.info(
            "llama.cpp context grown to %d positions per sequence (%d sequences)",
            self.allocated_context,
            self.max_batch_size,
        )
        return True

    def clear_cache(self) -> None:
        """Forget every cached prompt (benchmarks and tests time a cold start with it)."""
        self._batcher.reset()

    def describe(self) -> str:
        return (
            f"gguf (llama.cpp, {self.gguf_file.name}, {self._threads} threads, "
            f"batch {self.max_batch_size})"
        )

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        # converted and loaded now; the choice is the job's own (jobs interleave on the
        # worker thread), and the batch switches to it for the steps of its sequences
        job_state()[_ADAPTER] = self._adapters.load(adapter_dir)

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        from server.engine.sampling import CompletionSampler

        limit = min(params.max_tokens, self.context_length - len(prompt_ids))
        if limit <= 0 or not prompt_ids:
            return
        sampler = CompletionSampler(params, self._vocab)
        adapter = job_state().get(_ADAPTER, "")
        sequence = self._batcher.open(list(prompt_ids), adapter, sampler, limit)
        first = True
        try:
            if self.max_batch_size > 1:
                # let requests that arrived with this one join before the first step
                yield PAUSE
            while (out := self._batcher.next(sequence)) is not None:
                if out is PAUSE:  # no slot yet: the other streams' consumers go first
                    yield out
                    continue
                if first:
                    out = replace(out, cached_tokens=sequence.cached)
                    first = False
                yield out
                if should_stop():
                    return
        finally:
            self._batcher.close(sequence)

    def score(self, prompt_ids: list[int], top: int) -> list[Sampled]:
        """Each prompt token's logprob given the ones before it (see `Engine.score`).

        The prompt is read from its first position into an idle slot, with logits for
        every row: a cached prefix holds keys and values but no logits. The slot keeps the
        prompt, so a completion of it that follows reads only its last token again.
        """
        import llama_cpp
        import numpy as np

        if len(prompt_ids) > self.context_length:
            raise ValueError(f"{len(prompt_ids)} prompt tokens exceed the context")
        if self.allocated_context < len(prompt_ids) and self._grow(len(prompt_ids)):
            self._batcher.reset()  # open sequences read their tokens into the new context
        adapter = job_state().get(_ADAPTER, "")
        self._adapters.apply(adapter)
        slot = self._batcher.take_slot(adapter)
        rows = self._score_rows
        out: list[Sampled] = []
        for start in range(0, len(prompt_ids) - 1, rows.capacity):
            targets = prompt_ids[start + 1 : start + 1 + rows.capacity]
            # the last prompt token predicts nothing that is scored: not read here
            chunk = prompt_ids[start : start + len(targets)]
            rows.clear()
            for i, token in enumerate(chunk):
                rows.add(token, start + i, slot.seq_id, True)
            if rows.decode(self.llama.ctx) != 0:
                self._batcher.memory.drop(slot.seq_id)
                slot.truncate(0)
                raise RuntimeError("llama.cpp could not read the prompt (the cache is full)")
            slot.tokens.extend(chunk)
            pointer = llama_cpp.llama_get_logits(self.llama.ctx)
            logits = np.ctypeslib.as_array(pointer, shape=(len(chunk), self._vocab))
            out.extend(_scored(logits, targets, top))
        return out


#: up to this many alternatives, one argmax pass per alternative beats an argpartition of
#: every row (~8 ms a pass against ~100 ms for 512 rows of a 49k vocabulary)
_ARGMAX_PASSES = 8


def _scored(logits: Any, targets: list[int], top: int) -> list[Sampled]:
    """`targets[i]` with its logprob and `top` best alternatives under `logits[i]`."""
    import numpy as np

    logprobs = logits.astype(np.float32)  # a copy: llama.cpp's buffer is reused
    logprobs -= logprobs.max(axis=1, keepdims=True)
    total = np.sum(np.exp(logprobs), axis=1, keepdims=True, dtype=np.float64)
    logprobs -= np.log(total).astype(np.float32)
    rows = np.arange(len(targets))
    own = logprobs[rows, targets].tolist()
    k = min(top, logprobs.shape[1])
    best: Any  # (rows, k) ids, best first, and their logprobs
    values: Any
    if k <= _ARGMAX_PASSES:
        # best first, ties to the lower id; each pass takes its winner out of the running
        best = np.empty((len(targets), k), dtype=np.int64)
        values = np.empty(best.shape, dtype=np.float32)
        for j in range(k):
            best[:, j] = logprobs.argmax(axis=1)
            values[:, j] = logprobs[rows, best[:, j]]
            logprobs[rows, best[:, j]] = -np.inf
    else:
        best = np.argpartition(-logprobs, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(logprobs, best, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        values = np.take_along_axis(values, order, axis=1)
    alternatives = zip(targets, own, best.tolist(), values.tolist(), strict=True)
    return [Sampled(t, lp, tuple(zip(i, v, strict=True))) for t, lp, i, v in alternatives]


def _eot(llama: Any) -> int:
    import llama_cpp

    return int(llama_cpp.llama_vocab_eot(llama_cpp.llama_model_get_vocab(llama.model)))
