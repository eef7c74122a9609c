"""`POST /v1/completions` (legacy completions), JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.engine.served import ModelRegistry
from server.protocol.completions import CompletionRequest
from server.routes.common import json_body, json_response, sse_response, unless_disconnected
from server.services.completions import CompletionService


async def completions(request: Request) -> Response:
    body = await json_body(request)
    completion_request = CompletionRequest.model_validate(body)
    service: CompletionService = request.app.state.services.completions
    registry: ModelRegistry = request.app.state.services.registry
    lease = await registry.acquire(completion_request.model)
    try:
        prepared = service.prepare(completion_request, lease.model)
        if completion_request.stream:
            return sse_response(lease.hold(service.stream(prepared)), exclude_none=False)
        completion = await unless_disconnected(request, service.complete(prepared))
        return json_response(completion)
    finally:
        lease.release_unless_streaming()


routes = [Route("/v1/completions", completions, methods=["POST"])]
