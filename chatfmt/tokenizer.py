"""The one way pomar loads a model's Hugging Face tokenizer (for rendering and counting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(path_or_id: str | Path) -> Any:
    """A model folder's tokenizer (works offline), or a Hugging Face model id's.

    transformers is imported here, lazily: it is heavy and most callers only need it once.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path_or_id))
