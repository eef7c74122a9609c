"""GGUF engine (llama.cpp through llama-cpp-python): the fastest path on CPU-only machines.

It serves a GGUF file as is (the embedded model's Q4_1 file included, no conversion). The
decode loop is our own over llama-cpp-python's low-level eval: llama.cpp computes the
logits, and the CPU sampler (`server.engine.sampling`, shared with the torch engine)
samples them with the same rules as the other engines (logit_bias, OpenAI penalties, the
per-step constraint mask, logprobs). The KV cache is kept between requests: a prompt that
starts like the last one only evaluates what differs (as `Llama.generate(reset=False)`
does). LoRA adapters are converted to GGUF LoRA files once and switched per request with
llama.cpp's adapter API on the loaded base.
"""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.engine.base import Engine, GenerationParams, Sampled, ShouldStop
from server.engine.gguf.tokenizer import gguf_tokenizer
from server.engine.templates import end_of_turn_ids
from server.errors import ModelLoadError

log = logging.getLogger(__name__)

#: the context is the model's trained one, up to this many positions unless the model's
#: own `context` setting (`pomar models set ID context=N`) asks for more
MAX_CONTEXT = 8192
#: positions llama.cpp's KV cache is allocated for at load; a request that needs more grows
#: it (doubling, up to the context). llama.cpp writes the whole cache when it allocates it,
#: so a full 8192-position cache is resident from the start (180 MB for the embedded model,
#: plus a compute buffer that grows with it), which most requests never use.
INITIAL_CONTEXT = 2048


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
    """A GGUF model on llama.cpp: one context, one request at a time, KV cache reused."""

    backend = "gguf"

    def __init__(
        self,
        gguf_file: Path,
        hf_dir: Path | None = None,
        initial_context: int = INITIAL_CONTEXT,
        context: int | None = None,
    ) -> None:
        """Load `gguf_file`; `hf_dir`, when given, is the same model as a Hugging Face folder.

        The KV cache starts at `initial_context` positions and grows on demand, up to the
        model's context: at most MAX_CONTEXT, or at most `context` when given.

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
        self.gguf_file = gguf_file
        self.model_path = str(hf_dir or gguf_file)
        self.tokenizer = gguf_tokenizer(gguf_file, hf_dir, self.llama.metadata)
        ids = set(end_of_turn_ids(self.tokenizer, hf_dir or gguf_file.parent))
        ids.update(t for t in (self.llama.token_eos(), _eot(self.llama)) if t >= 0)
        self.eos_token_ids = frozenset(ids)
        self._vocab = self.llama.n_vocab()
        self._adapters = _AdapterCache(self)

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def allocated_context(self) -> int:
        """Positions the KV cache holds now (it grows up to `context_length` on demand)."""
        return int(self.llama.n_ctx())

    def _reserve(self, positions: int) -> None:
        """Grow llama.cpp's context (a new one; the cached prefix is lost) to hold `positions`."""
        size = self.allocated_context
        if positions <= size:
            return
        while size < positions:
            size *= 2
        size = min(size, self._context)
        import contextlib

        import numpy as np
        from llama_cpp import _internals

        llama = self.llama
        llama._ctx.close()  # free the old cache before allocating the new one
        llama.context_params.n_ctx = size
        llama._ctx = llama._stack.enter_context(
            contextlib.closing(
                _internals.LlamaContext(
                    model=llama._model, params=llama.context_params, verbose=False
                )
            )
        )
        llama.input_ids = np.ndarray((size,), dtype=np.intc)
        llama._n_ctx = size
        llama.n_tokens = 0
        self._adapters.reapply()
        log.info("llama.cpp context grown to %d positions", size)

    def describe(self) -> str:
        return f"gguf (llama.cpp, {self.gguf_file.name}, {self._threads} threads)"

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        if self._adapters.activate(adapter_dir):
            # the KV cache was computed with the previous adapter's weights
            self._forget(0)

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        from server.engine.sampling import CompletionSampler

        steps = max(0, min(params.max_tokens, self.context_length - len(prompt_ids)))
        if steps == 0 or not prompt_ids:
            return
        # the prompt and every sampled token but the last are evaluated
        self._reserve(len(prompt_ids) + steps - 1)
        sampler = CompletionSampler(params, self._vocab)
        cached: int | None = self._eval_prompt(prompt_ids)
        for step in range(steps):
            out = sampler.next(self._logits())
            yield out if cached is None else replace(out, cached_tokens=cached)
            cached = None  # told on the first token only
            if should_stop():
                return
            sampler.accept(out.token)
            if step + 1 < steps:  # the last token is never needed as input
                self.llama.eval([out.token])

    def score(self, prompt_ids: list[int], top: int) -> list[Sampled]:
        """Each prompt token's logprob given the ones before it (see `Engine.score`).

        The prompt is evaluated from its first position in batches of llama.cpp's
        `n_batch` with logits for every row, as `Llama(logits_all=True).eval` does: a
        cached prefix holds keys and values but no logits. The KV cache is left holding
        the prompt, so a completion of it that follows reads only its last token again.
        """
        import llama_cpp
        import numpy as np

        if len(prompt_ids) > self.context_length:
            raise ValueError(f"{len(prompt_ids)} prompt tokens exceed the context")
        self._reserve(len(prompt_ids))
        self._forget(0)
        llama = self.llama
        out: list[Sampled] = []
        for start in range(0, len(prompt_ids) - 1, llama.n_batch):
            targets = prompt_ids[start + 1 : start + 1 + llama.n_batch]
            # the last prompt token predicts nothing that is scored: not read here
            chunk = prompt_ids[start : start + len(targets)]
            # as Llama.eval: drop what a failed decode may have left past n_tokens
            llama._ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
            llama._batch.set_batch(batch=chunk, n_past=llama.n_tokens, logits_all=True)
            llama._ctx.decode(llama._batch)
            # what Llama.eval records, so the next request's prefix match sees these
            llama.input_ids[start : start + len(chunk)] = chunk
            llama.n_tokens += len(chunk)
            rows = llama_cpp.llama_get_logits(llama.ctx)
            logits = np.ctypeslib.as_array(rows, shape=(len(chunk), self._vocab))
            out.extend(_scored(logits, targets, top))
        return out

    def _eval_prompt(self, prompt_ids: list[int]) -> int:
        """Evaluate the prompt, reusing the cached prefix it shares with the last request.

        Returns how many prompt tokens came from the cache.
        """
        import numpy as np

        cached = self.llama.input_ids[: self.llama.n_tokens]
        n = min(len(cached), len(prompt_ids))
        differs = np.flatnonzero(cached[:n] != np.asarray(prompt_ids[:n], dtype=cached.dtype))
        prefix = int(differs[0]) if differs.size else n
        self._forget(min(prefix, len(prompt_ids) - 1))
        reused = int(self.llama.n_tokens)
        if self.llama.n_tokens < len(prompt_ids) - 1:
            self.llama.eval(prompt_ids[self.llama.n_tokens : -1])
        # The last prompt token is always evaluated alone: its logits start the completion,
        # and llama.cpp's logits for a batch's last row differ from a one-token step's by up
        # to ~0.5, so a cold and a reused cache would otherwise sample differently.
        self.llama.eval(prompt_ids[-1:])
        return reused

    def _forget(self, keep: int) -> None:
        """Drop the cached positions from `keep` on (all of them if llama.cpp cannot)."""
        import llama_cpp

        memory = llama_cpp.llama_get_memory(self.llama.ctx)
        if keep < self.llama.n_tokens and not llama_cpp.llama_memory_seq_rm(memory, -1, keep, -1):
            llama_cpp.llama_memory_clear(memory, True)
            keep = 0
        self.llama.n_tokens = min(keep, self.llama.n_tokens)

    def _logits(self) -> Any:
        """A float32 copy of the last evaluated position's logits."""
        import llama_cpp
        import numpy as np

        row = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self._vocab,)).copy()


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


class _AdapterCache:
    """GGUF LoRA adapters converted once, loaded on the base model, switched per request."""

    def __init__(self, engine: GGUFEngine, max_loaded: int = 8) -> None:
        self._engine = engine
        self._loaded: OrderedDict[Path, Any] = OrderedDict()
        self._active: Path | None = None
        self._max = max_loaded

    def reapply(self) -> None:
        """Set the active adapter again on a new llama.cpp context (it starts without)."""
        active, self._active = self._active, None
        if active is not None:
            self.activate(active)

    def activate(self, adapter_dir: Path | None) -> bool:
        """Make `adapter_dir` (None: no adapter) the active one; True if that changed."""
        import llama_cpp

        key = Path(adapter_dir).resolve() if adapter_dir is not None else None
        if key == self._active:
            return False
        ctx = self._engine.llama.ctx
        if key is None:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handle = self._load(key)
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales):
                raise RuntimeError(f"llama.cpp could not apply the adapter {key}")
        self._active = key
        return True

    def _load(self, key: Path) -> Any:
        import llama_cpp

        from server.engine.gguf.lora import lora_to_gguf

        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        engine = self._engine
        # llama.cpp copies the tensors at load: the converted file is only needed until then
        with tempfile.TemporaryDirectory(prefix="pomar-gguf-lora-") as tmp:
            out = lora_to_gguf(
                key, Path(tmp) / "adapter.gguf", engine.llama.metadata, Path(engine.model_path)
            )
            handle = llama_cpp.llama_adapter_lora_init(engine.llama.model, str(out).encode())
        if not handle:
            raise RuntimeError(f"llama.cpp could not load the converted adapter of {key}")
        log.info("adapter %s converted to GGUF and loaded on %s", key, engine.gguf_file.name)
        self._loaded[key] = handle
        stale = [k for k in self._loaded if k not in (key, self._active)]  # oldest first
        while len(self._loaded) > self._max and stale:
            llama_cpp.llama_adapter_lora_free(self._loaded.pop(stale.pop(0)))
        return handle


def _eot(llama: Any) -> int:
    import llama_cpp

    return int(llama_cpp.llama_vocab_eot(llama_cpp.llama_model_get_vocab(llama.model)))
