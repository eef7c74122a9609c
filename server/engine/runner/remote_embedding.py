"""The embedding model in a runner process of its own (`engine_process`).

The runner loads sentence-transformers and answers `embed` calls; the tokenizer comes
back with `Ready`, so counting tokens and decoding token-id inputs stay in the server
(`EmbeddingTokens`), as they are for the in-process engine. A runner that dies ends its
request with a 503 `engine_crashed`; the next request loads it again
(`EmbeddingModel.engine`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.engine.embeddings import EmbeddingTokens
from server.engine.runner.remote import RemoteEngine
from server.engine.runner.wire import Load


class RemoteEmbeddingEngine(EmbeddingTokens):
    """An embedding engine whose model runs in its own process."""

    def __init__(self, name: str, path: Path) -> None:
        """Start the runner and wait for its model (`ModelLoadError` when it cannot)."""
        self._remote = RemoteEngine(name, Load("embedding", str(path), {}, None, None))
        self._remote.wait_ready()
        info = self._remote.info
        self.device = str(info.extras["device"])
        self.dimension = int(info.extras["dimension"])
        self.pid = info.pid
        self._tokens(info.tokenizer, info.context_length)

    def embed(self, texts: list[str]) -> np.ndarray:
        """One float32 row per text, computed in the runner."""
        rows: np.ndarray = self._remote._call("embed", list(texts))
        return rows

    @property
    def crashed(self) -> str | None:
        """How the runner died; None while it runs."""
        return self._remote.crashed

    def resident_bytes(self) -> int | None:
        """What the model holds in its runner (see `RemoteEngine.resident_bytes`)."""
        return self._remote.resident_bytes()

    def close(self) -> None:
        """Stop the runner."""
        self._remote.close()
