"""`/v1/models` shapes."""

from __future__ import annotations

from typing import Literal

from server.protocol.common import OpenAIModel


class ModelCard(OpenAIModel):
    """One `model` object; fine-tuned models also name their `parent`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelDeleted(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
