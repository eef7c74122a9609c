"""A model store holding the tiny model, for the conversion and quantization tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from server.models.store import ModelCatalog


def tiny_catalog(home: Path, tiny_model_path: Path) -> ModelCatalog:
    """A store under `home` holding the tiny model as `tiny` (fp32 Hugging Face folder)."""
    store = ModelCatalog(home / "models")

    def copy(folder: Path) -> None:
        for path in tiny_model_path.iterdir():
            shutil.copy2(path, folder / path.name)

    store.add("tiny", copy, format="hf", source="imported", precision="fp32")
    return store
