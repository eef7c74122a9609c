"""Shapes shared by several endpoints."""

from __future__ import annotations

import secrets
import time

from pydantic import BaseModel, ConfigDict


class OpenAIModel(BaseModel):
    """Base for response objects: exact field names, no extras."""

    model_config = ConfigDict(extra="forbid")


class PromptTokensDetails(OpenAIModel):
    cached_tokens: int = 0


class CompletionTokensDetails(OpenAIModel):
    reasoning_tokens: int = 0


class Usage(OpenAIModel):
    """Token counts, measured with the model's own tokenizer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()


def new_id(prefix: str, nbytes: int = 12) -> str:
    """A random id like OpenAI's, e.g. `chatcmpl-3f9a...`."""
    return f"{prefix}-{secrets.token_hex(nbytes)}"


def now() -> int:
    """Unix seconds, the unit of every `created` field."""
    return int(time.time())


class ErrorDetail(OpenAIModel):
    """OpenAI's error object: every 4xx/5xx answer (and an error mid-stream) carries one."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(OpenAIModel):
    """The error envelope `{"error": {...}}`."""

    error: ErrorDetail


class EngineStats(OpenAIModel):
    """How one loaded model's engine is serving (a pomar object)."""

    model: str
    backend: str
    #: completions decoded together at most (1: one at a time)
    max_batch_size: int
    open_sequences: int | None = None
    #: the most completions one step has decoded together since the model loaded
    largest_batch: int | None = None
    #: speculative decoding: tokens drafted, and how many the model confirmed
    drafted_tokens: int | None = None
    accepted_tokens: int | None = None
    #: engine_process: the runner's process id, and how often it was restarted
    runner_pid: int | None = None
    runner_restarts: int | None = None


class Health(OpenAIModel):
    """`GET /health` (a pomar endpoint): the default model is loaded and serving."""

    status: str
    model: str
    backend: str
    loaded: list[str]
    engines: list[EngineStats] = []
    #: models marked failed (their engine runner kept dying), and how it last died
    failed: dict[str, str] = {}
