"""`POST /v1/chat/completions`, JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.protocol.chat import ChatCompletionRequest
from server.routes.common import json_body
from server.routes.generation import generate


async def chat_completions(request: Request) -> Response:
    body = ChatCompletionRequest.model_validate(await json_body(request))
    return await generate(request, body, request.app.state.services.chat, exclude_none=True)


routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
