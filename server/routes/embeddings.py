"""`POST /v1/embeddings`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.embeddings import EmbeddingList, EmbeddingRequest
from server.routes.common import json_body, json_response
from server.routes.spec import api_route
from server.services.embeddings import EmbeddingService


async def create_embeddings(request: Request) -> Response:
    body = await json_body(request)
    embedding_request = EmbeddingRequest.model_validate(body)
    service: EmbeddingService = request.app.state.services.embeddings
    return json_response(await service.create(embedding_request))


routes = [
    api_route(
        "/v1/embeddings", create_embeddings, "POST",
        operation_id="createEmbedding", summary="Create embeddings", tag="Embeddings",
        request=EmbeddingRequest, response=EmbeddingList,
        description="Served by the embedding model named at start (`--embedding-model`); "
        "404 when the server runs without one.",
    ),
]  # fmt: skip
