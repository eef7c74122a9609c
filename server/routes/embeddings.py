"""`POST /v1/embeddings`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.protocol.embeddings import EmbeddingRequest
from server.routes.common import json_body, json_response
from server.services.embeddings import EmbeddingService


async def create_embeddings(request: Request) -> Response:
    body = await json_body(request)
    embedding_request = EmbeddingRequest.model_validate(body)
    service: EmbeddingService = request.app.state.services.embeddings
    return json_response(await service.create(embedding_request))


routes = [Route("/v1/embeddings", create_embeddings, methods=["POST"])]
