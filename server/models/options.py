"""Per-model settings: the engine and its bounds for one stored model.

`pomar serve`'s settings are the defaults for every model; a stored model may carry its
own (`pomar models set ID key=value`), kept beside its weights in `pomar-options.json`
and used whenever that model loads, on demand or at start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

OPTIONS_FILE = "pomar-options.json"


class ModelOptions(BaseModel):
    """Settings of one model; None: the server's setting."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "mlx", "torch", "gguf"] | None = Field(
        None, description="engine for this model (auto, mlx, torch, gguf)"
    )
    max_batch_size: int | None = Field(
        None, ge=1, le=256, description="requests decoded together (MLX and GGUF engines)"
    )
    speculative: Literal["off", "ngram", "draft"] | None = Field(
        None, description="speculative decoding: off, ngram (any engine) or draft (GGUF)"
    )
    draft_model: str | None = Field(
        None, description="the model that drafts under speculative=draft (same family)"
    )
    draft_tokens: int | None = Field(
        None, ge=1, le=64, description="most tokens one speculative step drafts"
    )
    prompt_cache_entries: int | None = Field(
        None, ge=0, description="KV caches kept for prompt-prefix reuse (MLX engine)"
    )
    prompt_cache_mb: int | None = Field(
        None, ge=0, description="memory bound of the prompt cache in MiB (MLX engine)"
    )
    context: int | None = Field(
        None, ge=64, description="most tokens served in one sequence (at most the model's own)"
    )


def read_options(folder: Path) -> ModelOptions:
    """A model folder's options (none set when the file is absent or unreadable)."""
    try:
        return ModelOptions.model_validate_json((folder / OPTIONS_FILE).read_text())
    except (OSError, ValueError, ValidationError):
        return ModelOptions()


def write_options(folder: Path, options: ModelOptions) -> None:
    """Keep `options` in the folder (a temporary file renamed into place)."""
    tmp = folder / f".{OPTIONS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(options.model_dump(exclude_none=True), indent=2) + "\n")
    tmp.replace(folder / OPTIONS_FILE)


def parse_assignments(pairs: list[str], current: ModelOptions) -> ModelOptions:
    """`key=value` pairs applied to `current`; `key=` or `key=default` unsets a key.

    Raises:
        ValueError: a pair without `=`, an unknown key or a bad value (the message says).
    """
    values = current.model_dump()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"'{pair}' is not key=value")
        if key not in ModelOptions.model_fields:
            known = ", ".join(ModelOptions.model_fields)
            raise ValueError(f"unknown setting '{key}' (settings: {known})")
        values[key] = None if value.strip() in ("", "default") else value.strip()
    try:
        return ModelOptions.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ValueError(f"{first['loc'][0]}: {first['msg']}") from exc
