"""`/v1/models`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.models import ModelCard, ModelDeleted, ModelList
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
]  # fmt: skip
