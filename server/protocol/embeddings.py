"""`/v1/embeddings`: request validation and response shapes (OpenAI wire format)."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from server.protocol.common import OpenAIModel

MAX_INPUTS = 2048
"""OpenAI's limit on the number of inputs in one request."""

EmbeddingInput = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class EmbeddingRequest(BaseModel):
    """The body of `POST /v1/embeddings`. Extra unknown fields are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"model": "all-minilm-l6-v2", "input": ["a", "b"]},
                {"model": "all-minilm-l6-v2", "input": "a", "encoding_format": "base64"},
            ]
        },
    )

    input: EmbeddingInput = Field(
        description="A string, a list of strings, a token-id list or a list of token-id lists."
    )
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        if len(value) > MAX_INPUTS and not isinstance(value[0], int):  # inputs, not tokens
            raise ValueError(f"input may hold at most {MAX_INPUTS} items, not {len(value)}")
        for item in value:
            if isinstance(item, str | list) and not item:
                raise ValueError("input must not contain an empty string or empty token list")
        return value

    def texts(self) -> list[str] | None:
        """The text inputs, in order; None when the input is token ids."""
        value = self.input
        if isinstance(value, str):
            return [value]
        return [item for item in value if isinstance(item, str)] or None

    def token_ids(self) -> list[list[int]]:
        """The token-id inputs, one list per embedding; empty when the input is text."""
        value = self.input
        if isinstance(value, str) or isinstance(value[0], str):
            return []
        if isinstance(value[0], int):
            return [[item for item in value if isinstance(item, int)]]
        return [item for item in value if isinstance(item, list)]


class Embedding(OpenAIModel):
    """One `embedding` object: floats, or base64 of little-endian float32 as OpenAI sends."""

    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingUsage(OpenAIModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(OpenAIModel):
    """The response of `POST /v1/embeddings`."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A float32 vector in the requested encoding (floats are exact float32 values)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector.tolist()]
