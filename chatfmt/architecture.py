"""The architecture of the model a tokenizer was loaded from, read from its folder.

`config.json`'s `model_type` for a Hugging Face folder; `general.architecture` for a
folder holding one GGUF file (how `pomar models import` stores one, and where
transformers reads a GGUF's tokenizer from). The GGUF header is walked only as far as
that key, which llama.cpp's converters write among the first: no vocabulary is read.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import BinaryIO

# GGUF value types -> size in bytes (8: string, 9: array)
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 64  # general.* comes first; a header that hides it deeper is not worth a walk
_SHARD = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")
_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "Model")


def model_architecture(folder: str | Path) -> str | None:
    """The architecture of the model in `folder`, lowercased; None when it does not say."""
    path = Path(folder)
    if not path.is_dir():
        return None
    config = path / "config.json"
    if config.is_file():
        return _config_architecture(config)
    # a split model is named by its first shard; several models: which one is unknown
    ggufs = [
        p for p in path.glob("*.gguf") if (m := _SHARD.search(p.name)) is None or m[1] == "00001"
    ]
    return gguf_architecture(ggufs[0]) if len(ggufs) == 1 else None


def gguf_architecture(path: Path) -> str | None:
    """A GGUF file's `general.architecture`; None if the file does not say (or is no GGUF)."""
    try:
        with path.open("rb") as f:
            magic, version, _, n_kv = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or version not in (2, 3):
                return None
            for _ in range(min(n_kv, _MAX_KEYS)):
                key = _string(f)
                (kind,) = struct.unpack("<I", f.read(4))
                if key == "general.architecture" and kind == _STRING:
                    return _string(f).lower()
                _skip(f, kind)
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return None
    return None


def _config_architecture(config: Path) -> str | None:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("model_type"), str):
        return str(data["model_type"]).lower()
    names = data.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        name = names[0]
        for suffix in _SUFFIXES:
            name = name.removesuffix(suffix)
        return name.lower() or None
    return None


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8")


def _skip(f: BinaryIO, kind: int) -> None:
    if kind in _SIZES:
        f.seek(_SIZES[kind], 1)
    elif kind == _STRING:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(length, 1)
    elif kind == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _SIZES:
            f.seek(_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip(f, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")
