"""Embeddings: validate against the served embedding model, embed on its worker, encode."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from server.engine.embeddings import EmbeddingModel, EmbeddingTokens, resolve_embedding_model
from server.errors import InvalidRequest, NotFound
from server.models.registry import ModelRegistry
from server.protocol.embeddings import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    encode_vector,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Embedded:
    vectors: np.ndarray
    tokens: int


class EmbeddingService:
    """Answers `/v1/embeddings` with the one served embedding model (or none)."""

    def __init__(self, model: EmbeddingModel | None) -> None:
        self._model = model

    async def create(self, request: EmbeddingRequest) -> EmbeddingList:
        """Embed every input, in order, and count the tokens embedded."""
        model = self._resolve(request.model)
        engine = await model.engine()
        if request.dimensions is not None and request.dimensions != engine.dimension:
            raise InvalidRequest(
                f"The model '{model.id}' makes {engine.dimension}-dimensional embeddings and "
                f"cannot shorten them; 'dimensions' must be {engine.dimension} or omitted.",
                param="dimensions",
            )
        texts, token_ids = request.texts(), request.token_ids()
        _check_token_ids(token_ids, engine.vocab_size)
        out = await model.run(lambda e: _embed(e, texts, token_ids))
        data = [
            Embedding(embedding=encode_vector(vector, request.encoding_format), index=i)
            for i, vector in enumerate(out.vectors)
        ]
        usage = EmbeddingUsage(prompt_tokens=out.tokens, total_tokens=out.tokens)
        return EmbeddingList(data=data, model=request.model, usage=usage)

    def _resolve(self, model_id: str) -> EmbeddingModel:
        # OpenAI's names (text-embedding-3-small...) are not aliased: a silent stand-in would
        # hand out 384-d vectors where 1536 are expected; the 404 names the model to use
        if self._model is not None and model_id == self._model.id:
            return self._model
        if self._model is None:
            detail = "this server serves no embedding model (--embedding-model none)."
        else:
            detail = f"this server's embedding model is '{self._model.id}'."
        raise NotFound(
            f"The model '{model_id}' does not exist or is not an embedding model: {detail}",
            param="model",
            code="model_not_found",
        )


def _check_token_ids(token_ids: list[list[int]], vocab_size: int) -> None:
    for i, ids in enumerate(token_ids):
        if any(token < 0 or token >= vocab_size for token in ids):
            raise InvalidRequest(
                f"input[{i}] has a token id outside the embedding model's vocabulary "
                f"(0..{vocab_size - 1}).",
                param="input",
            )


def _embed(
    engine: EmbeddingTokens, texts: list[str] | None, token_ids: list[list[int]]
) -> _Embedded:
    """On the worker thread: decode token-id inputs, count tokens, embed."""
    if texts is not None:
        return _Embedded(engine.embed(texts), engine.count_tokens(texts))
    return _Embedded(engine.embed(engine.decode(token_ids)), engine.count_ids(token_ids))


def serve_embedding_model(
    setting: str, registry: ModelRegistry, in_process: bool = True
) -> EmbeddingModel | None:
    """Resolve the `embedding_model` setting and keep its id out of chat.

    A bad setting fails here, at start-up; the weights load on the first request, in a
    runner process of their own unless `in_process`.
    """
    resolved = resolve_embedding_model(setting)
    if resolved is None:
        log.info("no embedding model: /v1/embeddings is off")
        return None
    model = EmbeddingModel(*resolved, in_process=in_process)
    registry.refuse(
        model.id,
        f"'{model.id}' is an embedding model, served by /v1/embeddings only; "
        "it cannot generate text.",
    )
    return model
