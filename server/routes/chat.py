"""`POST /v1/chat/completions`, JSON or server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from server.routes.common import json_body
from server.routes.generation import generate
from server.routes.spec import api_route


async def chat_completions(request: Request) -> Response:
    body = ChatCompletionRequest.model_validate(await json_body(request))
    return await generate(request, body, request.app.state.services.chat, exclude_none=True)


routes = [
    api_route(
        "/v1/chat/completions", chat_completions, "POST",
        operation_id="createChatCompletion", summary="Create a chat completion", tag="Chat",
        request=ChatCompletionRequest, response=ChatCompletion, stream=ChatCompletionChunk,
        description="Known OpenAI parameters pomar does not implement (audio, prediction, "
        "web_search_options, functions, ...) are refused with 400 `unsupported_parameter` "
        "unless they carry their 'off' value, never silently dropped.",
    ),
]  # fmt: skip
