"""`POST /v1/completions` (legacy completions), JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.protocol.completions import CompletionRequest
from server.routes.common import json_body
from server.routes.generation import generate


async def completions(request: Request) -> Response:
    body = CompletionRequest.model_validate(await json_body(request))
    return await generate(request, body, request.app.state.services.completions, exclude_none=False)


routes = [Route("/v1/completions", completions, methods=["POST"])]
