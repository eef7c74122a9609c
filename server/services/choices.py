"""Runs the choices of one request on a model's worker: shared by chat and completions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from server.engine.base import GenerationParams
from server.engine.generation import Chunk, stream_chunks
from server.models.residency import LoadedModel
from server.protocol.common import CompletionTokensDetails, PromptTokensDetails, Usage
from server.services.observer import NO_OBSERVER, GenerationTrace

Producer = Callable[[Callable[[], bool]], Iterator[tuple[int, Chunk]]]


def choices_producer(
    model: LoadedModel,
    prompts: Sequence[list[int]],
    params: GenerationParams,
    n: int,
    trace: GenerationTrace | None = None,
) -> Producer:
    """The worker job: `n` choices per prompt, one after another, each with its own seed.

    Choice `i * n + j` is the j-th sample of prompt i, as OpenAI numbers them. `trace`
    hears each chunk's tokens, and each prompt once (its first choice's reading, as
    `usage` counts it).
    """
    heard = trace or GenerationTrace(NO_OBSERVER, model.id)

    def produce(should_stop: Callable[[], bool]) -> Iterator[tuple[int, Chunk]]:
        # runs on the worker thread, one request at a time: safe to switch adapters here
        model.engine.activate_adapter(model.adapter)
        for p, prompt_ids in enumerate(prompts):
            for j in range(n):
                choice = params
                if params.seed is not None:
                    choice = replace(params, seed=params.seed + j)
                completion = heard.completion()
                for piece in stream_chunks(model.engine, prompt_ids, choice, should_stop):
                    completion.chunk(piece)
                    if j == 0 and piece.finish_reason is not None:
                        heard.prompt(len(prompt_ids), piece.cached_tokens)
                    yield p * n + j, piece
                if should_stop():
                    return

    return produce


def usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> Usage:
    """The `usage` object; `cached_tokens` were read from the engine's prompt cache,
    `reasoning_tokens` of the completion were a reasoning block."""
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens),
    )


def fingerprint(model: LoadedModel) -> str:
    """Stable per weights and backend, as OpenAI's `system_fingerprint` is per configuration."""
    digest = hashlib.sha1(f"{model.engine.model_path}|{model.engine.backend}".encode())
    return f"fp_{digest.hexdigest()[:10]}"
