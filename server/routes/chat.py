"""`POST /v1/chat/completions`, JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.engine.served import ModelRegistry
from server.protocol.chat import ChatCompletionRequest
from server.routes.common import json_body, json_response, sse_response, unless_disconnected
from server.services.chat import ChatService


async def chat_completions(request: Request) -> Response:
    body = await json_body(request)
    chat_request = ChatCompletionRequest.model_validate(body)
    service: ChatService = request.app.state.services.chat
    registry: ModelRegistry = request.app.state.services.registry
    lease = await registry.acquire(chat_request.model)
    try:
        prepared = service.prepare(chat_request, lease.model)
        if chat_request.stream:
            return sse_response(lease.hold(service.stream(prepared)), exclude_none=True)
        completion = await unless_disconnected(request, service.complete(prepared))
        return json_response(completion)
    finally:
        lease.release_unless_streaming()


routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
