"""`/v1/models`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.routes.common import json_response


async def list_models(request: Request) -> Response:
    return json_response(request.app.state.services.models.list())


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    return json_response(request.app.state.services.models.get(model_id))


async def delete_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    return json_response(request.app.state.services.models.delete(model_id))


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    Route("/v1/models/{model_id:path}", delete_model, methods=["DELETE"]),
]
