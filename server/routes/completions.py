"""`POST /v1/completions` (legacy completions), JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.completions import Completion, CompletionRequest
from server.routes.common import json_body
from server.routes.generation import generate
from server.routes.spec import api_route


async def completions(request: Request) -> Response:
    body = CompletionRequest.model_validate(await json_body(request))
    return await generate(request, body, request.app.state.services.completions, exclude_none=False)


routes = [
    api_route(
        "/v1/completions", completions, "POST",
        operation_id="createCompletion", summary="Create a completion (legacy)",
        tag="Completions", request=CompletionRequest, response=Completion, stream=Completion,
        description="`logprobs` goes up to 20 (OpenAI's legacy endpoint stops at 5).",
    ),
]  # fmt: skip
