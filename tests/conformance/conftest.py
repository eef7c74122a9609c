"""One live server (tiny model, API key set) for the conformance tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import API_KEY, LiveServer


@pytest.fixture(scope="session")
def conformance_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Short default completions and `n` <= 2, so fuzzed generation stays quick."""
    env: dict[str, str | None] = {"POMAR_DEFAULT_MAX_TOKENS": "4", "POMAR_MAX_N": "2"}
    live = LiveServer(
        model=str(tiny_model_path),
        backend="torch",
        home=tmp_path_factory.mktemp("conformance-home"),
        api_key=API_KEY,
        env=env,
    ).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="session")
def served_model(conformance_server: LiveServer) -> dict[str, str]:
    """The ids of the chat model (listed first) and the embedding model (listed last)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    models = httpx.get(f"{conformance_server.base_url}/v1/models", headers=headers).json()["data"]
    return {"chat": models[0]["id"], "embeddings": models[-1]["id"]}
