"""`/v1/models` shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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


ModelKind = Literal["base", "fine-tune", "checkpoint", "embedding"]


class ModelDetails(OpenAIModel):
    """What pomar knows of one model (a pomar object, not OpenAI's `model`).

    Sizes are bytes. A fine-tune (or checkpoint) is a LoRA adapter served on its base: its
    size is the adapter's, and it holds no memory of its own (see its `base`).
    """

    id: str
    object: Literal["pomar.model"] = "pomar.model"
    created: int
    kind: ModelKind
    #: the model it was fine-tuned from (fine-tunes and checkpoints)
    parent: str | None = None
    #: the base model it runs on: itself for a base
    base: str
    #: where it came from: `path` (a folder or file named at start, outside the store),
    #: the store's `embedded`, `pulled`, `imported`, `converted`, `exported`, or
    #: `fine-tuned`
    source: str
    #: a hub repo id, a local path, the model it was converted from, or a fine-tune's job
    origin: str | None = None
    #: its folder or file on this machine (a fine-tune: its adapter folder)
    path: str
    #: hf, mlx, gguf, or lora (a fine-tune's adapter)
    format: str | None = None
    #: bf16, fp16, fp32, q4/q8 (MLX), or a GGUF file type such as Q4_1 or Q8_0
    precision: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    context_length: int | None = None
    #: bytes on disk
    size_bytes: int | None = None
    #: the engine that serves it now, or would load it (torch, mlx, gguf)
    backend: str | None = None
    loaded: bool
    #: the model named at start: never unloaded for being idle
    pinned: bool = False
    #: requests using it now (a model in use is not unloaded)
    active_requests: int = 0
    #: bytes the residency counts for it against the budget while loaded, else null
    memory_bytes: int | None = None
    #: bytes it needs to load: weights as the engine holds them, a KV cache, buffers
    memory_required_bytes: int | None = None
    #: why a fact is missing, if one is
    notes: list[str] = Field(default_factory=list)


class ModelDetailsList(OpenAIModel):
    """Every model with its facts, and the memory budget they load within."""

    object: Literal["list"] = "list"
    data: list[ModelDetails]
    #: the memory budget (POMAR_MAX_MEMORY, default RAM - 4 GiB)
    budget_bytes: int | None = None
    #: bytes reckoned for the loaded models together
    in_use_bytes: int
