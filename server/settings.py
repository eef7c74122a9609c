"""One typed settings object: environment variables `POMAR_*`, CLI flags on top."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Backend = Literal["auto", "mlx", "torch", "gguf"]


class Settings(BaseSettings):
    """Everything the server needs to start, built once and passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="POMAR_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    model: str = Field(
        "smollm2-135m-instruct",
        description="Model to serve: the embedded id, a local HF folder or a hub repo id.",
    )
    backend: Backend = Field(
        "auto",
        description="Engine: auto, mlx, torch or gguf (llama.cpp); auto's rule is in README.",
    )
    home: Path = Field(Path("~/.pomar"), description="Models, files, jobs and database.")
    api_key: SecretStr | None = Field(None, description="Bearer key required on /v1 when set.")
    log_level: str = Field("info", description="Python logging level.")
    max_n: int = Field(8, ge=1, le=128, description="Largest `n` a chat request may ask for.")
    default_max_tokens: int = Field(
        512, ge=1, description="Completion length when a request names none."
    )
    max_upload_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest file `/v1/files` accepts, in bytes."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest JSON request body, in bytes (file uploads have max_upload_bytes).",
    )
    max_messages: int = Field(2048, ge=1, description="Most messages one chat request may carry.")
    reasoning_field: Literal["reasoning_content", "reasoning", "both"] = Field(
        "reasoning_content",
        description="Message field of a reasoning model's thinking: reasoning_content "
        "(DeepSeek, llama.cpp), reasoning (vLLM, OpenRouter) or both.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (CORS); empty: CORS off. "
        "POMAR_CORS_ORIGINS takes a JSON list or a comma-separated list; '*' allows any.",
    )
    embedding_model: str = Field(
        "all-minilm-l6-v2",
        description="`/v1/embeddings` model: the embedded id, a local sentence-transformers "
        "or HF folder, or 'none' (or empty) to turn the endpoint off.",
    )
    max_batch_size: int = Field(
        8, ge=1, le=256, description="Concurrent requests decoded together (MLX and GGUF engines)."
    )
    engine_process: bool = Field(
        True,
        description="Run each loaded model's engine (and the embedding model) in its own "
        "runner process: a native crash there costs its requests (503 engine_crashed), "
        "never the server, and the model loads again on the next request; false runs "
        "them in the server process (docs/engines.md).",
    )
    hosts: str | None = Field(
        None,
        description="Serve the model sharded across machines (MLX): host:slots,... or an "
        "mlx.launch JSON hostfile, this machine first; rank 0 serves the API "
        "(docs/distributed.md).",
    )
    speculative: Literal["off", "ngram", "draft"] = Field(
        "off",
        description="Speculative decoding: 'ngram' drafts the next tokens from the "
        "sequence's own earlier text (prompt lookup; GGUF, MLX and torch engines; on MLX "
        "each stream then decodes alone, outside the batches), 'draft' has draft_model "
        "draft them (GGUF engine); they are verified in one step, and the output is the "
        "same: docs/engines.md.",
    )
    draft_model: str | None = Field(
        None,
        description="The model that drafts under speculative=draft: a smaller GGUF of the "
        "served model's family (a stored model id, a folder or a .gguf file).",
    )
    draft_tokens: int = Field(
        8, ge=1, le=64, description="Most tokens one speculative step drafts per sequence."
    )
    prompt_cache_entries: int = Field(
        16, ge=0, description="KV caches kept for prompt-prefix reuse (0: no prompt cache)."
    )
    prompt_cache_mb: int = Field(
        128, ge=0, description="Memory bound of the prompt cache, in MiB (MLX engine)."
    )

    train_hosts: str | None = Field(
        None,
        description="Machines fine-tuning jobs may train on, data-parallel: host:slots,... "
        "or an mlx.launch JSON hostfile; the first must be this machine (docs/distributed.md).",
    )
    max_memory: ByteSize | None = Field(
        None,
        description="Memory budget for loaded models, e.g. 8GB or 512MiB (default: this "
        "machine's RAM minus 4 GiB); least recently used models are unloaded to fit.",
    )
    keep_alive: float = Field(
        300.0,
        description="Seconds an idle model stays loaded (the model named at start stays); "
        "-1 keeps models loaded. Also takes 30s, 5m, 1h.",
    )

    @field_validator("train_hosts")
    @classmethod
    def _train_hosts(cls, value: str | None) -> str | None:
        from server.jobs.launch import parse_hosts

        parse_hosts(value)  # a HostsError (a ValueError) says what is wrong, at start-up
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        # a JSON list, or the friendlier comma-separated spelling
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [o.strip() for o in text.split(",") if o.strip()]
        return value

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        # Ollama's keep_alive spelling: a number of seconds, or one with an s/m/h unit
        if isinstance(value, str) and value.strip()[-1:] in ("s", "m", "h"):
            unit = {"s": 1, "m": 60, "h": 3600}[value.strip()[-1]]
            return float(value.strip()[:-1]) * unit
        return value

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value

    @property
    def models_dir(self) -> Path:
        """Where imported and converted models live."""
        return self.home / "models"
