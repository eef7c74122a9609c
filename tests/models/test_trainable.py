"""`server.models.trainable`: what a fine-tune trains on, and the GGUF training copy's cache.

The live fine-tune of an imported GGUF is tests/server/test_finetune_imported_live.py;
these are the rules around it, on GGUFs built here with the `gguf` package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.engine.gguf.from_hf import convert_hf_to_gguf
from server.errors import ModelNotTrainable
from server.models.importing import import_model
from server.models.store import ModelCatalog
from server.models.trainable import (
    FAILED_FILE,
    TRAIN_DIR,
    TRAIN_MARKER,
    display_name,
    ensure_training_copy,
    scrub_paths,
    training_base,
)


def _no_path(message: str, *roots: Path) -> None:
    """What an API client may read: no path, traceback or exception name (as the
    security suite holds every error to)."""
    assert not any(str(root) in message for root in roots), message
    assert not re.search(r"/[\w.-]+/", message), message
    assert not re.search(r"Traceback|\.py\b|\w+Error\b", message), message


def _llama_gguf_without_tokenizer(path: Path) -> Path:
    """A llama GGUF transformers' mapping accepts, but whose de-quantization fails (it
    carries no tokenizer)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_tensor("token_embd.weight", np.zeros((16, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_hugging_face_folder_trains_on_itself(tiny_model_path: Path) -> None:
    base = training_base("tiny", tiny_model_path)
    assert base.folder == tiny_model_path and base.gguf is None and base.ready


def test_an_imported_gguf_is_built_once_into_its_store_folder(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    catalog = ModelCatalog(tmp_path / "models")
    gguf = convert_hf_to_gguf(tiny_model_path, tmp_path / "tiny-f16.gguf", "f16")
    entry = import_model(catalog, gguf, "tiny-gguf")
    stored_gguf = entry.path / "tiny-f16.gguf"
    base = training_base("tiny-gguf", entry.path)
    assert (base.folder, base.gguf, base.ready) == (entry.path / TRAIN_DIR, stored_gguf, False)
    # the start model's spec names the GGUF file itself: the same copy
    assert training_base("tiny-gguf", stored_gguf).folder == base.folder

    events: list[str] = []
    folder = ensure_training_copy("tiny-gguf", entry.path, events.append)
    assert folder == base.folder and training_base("tiny-gguf", entry.path).ready
    assert (folder / TRAIN_MARKER).is_file() and (folder / "config.json").is_file()
    assert events[0].startswith("Building the Hugging Face weights of 'tiny-gguf'")
    assert "Weights de-quantized" in " ".join(events)
    for message in events:
        _no_path(message, tmp_path)
    # the store lists it as before: one GGUF model, the copy inside its folder
    assert [e.format for e in catalog.list()] == ["gguf"]

    # a second call builds nothing
    again: list[str] = []
    built = (folder / TRAIN_MARKER).stat().st_mtime_ns
    assert ensure_training_copy("tiny-gguf", entry.path, again.append) == folder
    assert again == [] and (folder / TRAIN_MARKER).stat().st_mtime_ns == built

    # a changed GGUF (same name, another file) is built again
    convert_hf_to_gguf(tiny_model_path, stored_gguf, "q8_0")
    assert not training_base("tiny-gguf", entry.path).ready
    ensure_training_copy("tiny-gguf", entry.path)
    assert (folder / TRAIN_MARKER).stat().st_mtime_ns != built


def test_a_failed_de_quantization_is_kept_and_refused_at_once(tmp_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "models")
    entry = import_model(catalog, _llama_gguf_without_tokenizer(tmp_path / "b.gguf"), "broken")
    assert not training_base("broken", entry.path).ready  # the cheap check lets it through
    with pytest.raises(ModelNotTrainable) as first:
        ensure_training_copy("broken", entry.path)
    assert first.value.code == "model_not_trainable" and first.value.param == "model"
    assert "'broken' cannot be fine-tuned" in first.value.message
    assert "tokenizer" in first.value.message  # transformers' reason, kept
    _no_path(first.value.message, tmp_path)
    assert (entry.path / FAILED_FILE).is_file()
    assert not (entry.path / TRAIN_DIR).exists()
    assert not list(entry.path.glob(f"{TRAIN_DIR}.tmp-*"))
    # the next job is refused by the cheap check, with the same reason
    with pytest.raises(ModelNotTrainable) as second:
        training_base("broken", entry.path)
    assert second.value.message == first.value.message


def test_refusals_name_the_model_not_a_path(tmp_path: Path, tiny_model_path: Path) -> None:
    outside = convert_hf_to_gguf(tiny_model_path, tmp_path / "loose.gguf", "f16")
    with pytest.raises(ModelNotTrainable, match="outside pomar's model store") as loose:
        training_base(str(outside), outside)
    assert "'loose.gguf'" in loose.value.message
    _no_path(loose.value.message, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotTrainable, match="no weights"):
        training_base("empty", empty)


def test_scrub_paths_and_display_name() -> None:
    assert scrub_paths("OSError: /home/u/.pomar/models/x/model.gguf is bad") == (
        "OSError: model.gguf is bad"
    )
    assert scrub_paths("at 'C:\\Users\\u\\m.gguf'") == "at 'm.gguf'"
    assert scrub_paths("1/2 of the tensors") == "1/2 of the tensors"
    assert display_name("org/model") == "org/model"
    assert display_name("/srv/models/qwen.gguf") == "qwen.gguf"
