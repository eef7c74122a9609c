"""Session fixtures: the tiny model (built once), the embedded model, live servers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from live_server import LiveServer
from tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from live_server import API_KEY


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama model, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def pomar_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A POMAR_HOME shared by the session's servers (so the embedded import happens once)."""
    return tmp_path_factory.mktemp("pomar-home")


@pytest.fixture(scope="session")
def embedded_model_path(pomar_home: Path) -> Path:
    """The embedded SmolLM2 model imported into the session's store."""
    from server.engine.embedded import ensure_embedded_model

    return ensure_embedded_model(pomar_home / "models", progress=False)


def _serve(
    model: str, backend: str, home: Path, api_key: str | None = None
) -> Iterator[LiveServer]:
    server = LiveServer(model=model, backend=backend, home=home, api_key=api_key).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=["mlx", "torch"])
def tiny_server(
    request: pytest.FixtureRequest, tiny_model_path: Path, pomar_home: Path
) -> Iterator[LiveServer]:
    """A real server on the tiny model, once per backend; MLX's requires an API key."""
    key = API_KEY if request.param == "mlx" else None
    yield from _serve(str(tiny_model_path), request.param, pomar_home, key)


@pytest.fixture(scope="session")
def embedded_server(pomar_home: Path, embedded_model_path: Path) -> Iterator[LiveServer]:
    """A real server on the embedded model, default backend, default model id."""
    yield from _serve("smollm2-135m-instruct", "auto", pomar_home)
