"""The GGUF engine's tokenizer: the model folder's, else the one a GGUF file carries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.errors import ModelLoadError

#: tokenizer classes that are their tokenizer.json and nothing more
_PLAIN_TOKENIZERS = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})


def gguf_tokenizer(gguf_file: Path, hf_dir: Path | None, metadata: dict[str, str]) -> Any:
    """The HF tokenizer: the folder's, else read from the GGUF; the GGUF's chat template."""
    try:
        if hf_dir is not None and (hf_dir / "tokenizer_config.json").is_file():
            tokenizer = _folder_tokenizer(hf_dir)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                str(gguf_file.parent), gguf_file=gguf_file.name
            )
    except Exception as exc:
        raise ModelLoadError(
            f"transformers could not read the tokenizer of {gguf_file} ({exc}); put the "
            "model's tokenizer files (tokenizer.json, tokenizer_config.json) next to it"
        ) from exc
    template = metadata.get("tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer


def _folder_tokenizer(hf_dir: Path) -> Any:
    """The tokenizer of a Hugging Face folder, as `AutoTokenizer` loads it.

    A folder pomar imported (the embedded model) holds a plain ``tokenizer.json``, which
    `PreTrainedTokenizerFast` loads as `AutoTokenizer` does, without the model-config
    lookup that imports torch in transformers 5 (~200 MB resident for a server that never
    runs torch). Any other folder goes through `AutoTokenizer` and its per-model rules.
    """
    from server.modelfiles import read_import_marker

    try:
        config = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    plain = (
        isinstance(config, dict)
        and config.get("tokenizer_class") in _PLAIN_TOKENIZERS
        and "auto_map" not in config
        and (hf_dir / "tokenizer.json").is_file()
        and read_import_marker(hf_dir) is not None
    )
    if plain:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
    from chatfmt.tokenizer import load_tokenizer

    return load_tokenizer(hf_dir)
