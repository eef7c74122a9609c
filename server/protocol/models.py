"""`/v1/models` shapes."""

from __future__ import annotations

from typing import Literal

from server.protocol.common import OpenAIModel


class ModelCard(OpenAIModel):
    """One `model` object; fine-tuned models also name their `parent`.

    `loaded` is a pomar extension: whether the model is in memory now (a request for one
    that is not loads it first).
    """

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    loaded: bool | None = None


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelDeleted(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
