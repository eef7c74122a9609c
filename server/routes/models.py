"""`/v1/models`, and pomar's `/v1/pomar/models` (facts, load, unload)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.models import (
    ModelCard,
    ModelDeleted,
    ModelDetails,
    ModelDetailsList,
    ModelList,
)
from server.routes.common import json_response
from server.routes.spec import api_route

_MODEL_ID = {"model_id": "A model id; ids of local folders may hold '/'."}


async def list_models(request: Request) -> Response:
    return json_response(request.app.state.services.models.list())


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    return json_response(request.app.state.services.models.get(model_id))


async def delete_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    return json_response(request.app.state.services.models.delete(model_id))


async def list_model_details(request: Request) -> Response:
    return json_response(await request.app.state.services.models.details())


async def get_model_details(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    return json_response(await request.app.state.services.models.detail(model_id))


async def load_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    return json_response(await request.app.state.services.models.load(model_id))


async def unload_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    return json_response(await request.app.state.services.models.unload(model_id))


_POMAR = "A pomar endpoint (not in OpenAI's API). "
_FACTS = (
    "Per model: kind, parent and base, source and origin (a start-up path, the store's "
    "embedded/pulled/imported/converted/exported models, fine-tunes with their job), "
    "format (hf, mlx, gguf; lora for a fine-tune's adapter), precision, architecture, "
    "parameters, context length, size on disk, the engine, whether it is loaded, the "
    "requests using it, the memory reckoned for it while loaded and the memory it needs to "
    "load (the estimate admission uses). Fine-tunes share their base's memory."
)

routes = [
    api_route(
        "/v1/models", list_models, "GET",
        operation_id="listModels", summary="List models", tag="Models", response=ModelList,
    ),
    api_route(
        "/v1/models/{model_id:path}", get_model, "GET",
        operation_id="retrieveModel", summary="Retrieve a model", tag="Models",
        response=ModelCard, path_params=_MODEL_ID,
    ),
    api_route(
        "/v1/models/{model_id:path}", delete_model, "DELETE",
        operation_id="deleteModel", summary="Delete a fine-tuned model", tag="Models",
        response=ModelDeleted, path_params=_MODEL_ID,
        description="Only fine-tuned (and checkpoint) models can be deleted; a base model "
        "answers 400 `model_not_deletable`.",
    ),
    api_route(
        "/v1/pomar/models", list_model_details, "GET",
        operation_id="listModelDetails", summary="Every model with its facts", tag="Models",
        response=ModelDetailsList,
        description=f"{_POMAR}{_FACTS} Also the memory budget and the bytes in use.",
    ),
    api_route(
        "/v1/pomar/models/{model_id:path}", get_model_details, "GET",
        operation_id="retrieveModelDetails", summary="A model's facts", tag="Models",
        response=ModelDetails, path_params=_MODEL_ID, description=f"{_POMAR}{_FACTS}",
    ),
    api_route(
        "/v1/pomar/models/{model_id:path}/load", load_model, "POST",
        operation_id="loadModel", summary="Load a model into memory", tag="Models",
        response=ModelDetails, path_params=_MODEL_ID,
        description=f"{_POMAR}Loads the model now, as its first request would (a "
        "fine-tune: its base), and answers its facts; a loaded model is left as it is. "
        "Idle models are unloaded to make room within the memory budget "
        "(POMAR_MAX_MEMORY); one that cannot fit even alone is a 400 `model_too_large`, "
        "and a 503 `model_busy` when the models in the way stay busy. A model loaded "
        "this way is unloaded after the keep-alive (POMAR_KEEP_ALIVE) like any other, "
        "except the model named at start.",
    ),
    api_route(
        "/v1/pomar/models/{model_id:path}/unload", unload_model, "POST",
        operation_id="unloadModel", summary="Unload a model from memory", tag="Models",
        response=ModelDetails, path_params=_MODEL_ID,
        errors={"409": "The model is serving requests now (`model_in_use`)"},
        description=f"{_POMAR}Unloads a base model now and answers its facts; one that "
        "is not loaded is left as it is. While requests use it the answer is 409 "
        "`model_in_use` and nothing is unloaded (it does not wait). A fine-tune is not "
        "unloaded alone (400 `model_not_unloadable`: unload its base), nor the embedding "
        "model. The next request for the model loads it again, the model named at start "
        "included.",
    ),
]  # fmt: skip
