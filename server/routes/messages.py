"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API.

The same chat service as `/v1/chat/completions` serves them (`server.services.messages`);
errors on these paths take Anthropic's shape (`server.errors.envelope_for`), mid-stream
too (an `error` event).
"""

from __future__ import annotations

import json

from pydantic import BaseModel
from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from server.errors import PomarError, anthropic_envelope
from server.protocol.message_answer import (
    AnthropicError,
    Message,
    MessageStreamEvent,
    MessageTokensCount,
    PingEvent,
)
from server.protocol.messages import CountTokensRequest, MessagesRequest
from server.routes.common import event_stream, json_body, json_response, unless_disconnected
from server.routes.spec import api_route
from server.services.generation import begin


async def create_message(request: Request) -> Response:
    body = MessagesRequest.model_validate(await json_body(request))
    services = request.app.state.services
    generation = await begin(services.registry, body, services.messages)
    try:
        if body.stream:
            return event_stream(generation.stream(), _event, _error_event, ping=_ping)
        return json_response(await unless_disconnected(request, generation.complete()))
    finally:
        generation.release_unless_streaming()


async def count_tokens(request: Request) -> Response:
    body = CountTokensRequest.model_validate(await json_body(request))
    services = request.app.state.services
    lease = await services.registry.acquire(body.model)
    try:
        return json_response(services.messages.count_tokens(body, lease.model))
    finally:
        lease.release()


def _event(event: BaseModel) -> dict[str, str]:
    """An SSE event named by its type, as Anthropic sends them."""
    name = event.model_dump(include={"type"})["type"]
    return {"event": str(name), "data": event.model_dump_json()}


def _error_event(error: PomarError) -> dict[str, str]:
    return {
        "event": "error",
        "data": json.dumps(anthropic_envelope(error.message, error.status_code)),
    }


def _ping() -> ServerSentEvent:
    return ServerSentEvent(event="ping", data=PingEvent().model_dump_json())


_ABOUT = (
    "Anthropic's Messages API (`anthropic` SDK, Claude Code) over the same conversation "
    "service as chat completions: text, `tool_use` / `tool_result` blocks and tools "
    "(`input_schema`, `tool_choice` auto/any/tool/none) with grammar-constrained calls, "
    "`thinking` for reasoning models (their switch; `budget_tokens` is not enforced), "
    "`stop_sequences` (up to 4), `temperature`, `top_p`, `top_k`. The key may come as "
    '`x-api-key`. Errors take Anthropic\'s shape `{"type": "error", "error": '
    '{"type", "message"}}`; a stream sends named events (`message_start`, '
    "`content_block_*`, `message_delta`, `message_stop`, `ping`, `error`) and no `[DONE]`. "
    "Images, documents, server tools and a final assistant turn (prefill) are refused."
)

routes = [
    api_route(
        "/v1/messages", create_message, "POST",
        operation_id="createMessage", summary="Create a message (Anthropic)", tag="Messages",
        request=MessagesRequest, response=Message, stream=MessageStreamEvent,
        named_events=True, error=AnthropicError, description=_ABOUT,
    ),
    api_route(
        "/v1/messages/count_tokens", count_tokens, "POST",
        operation_id="countMessageTokens", summary="Count a message's tokens (Anthropic)",
        tag="Messages", request=CountTokensRequest, response=MessageTokensCount,
        error=AnthropicError,
        description="The prompt tokens a `POST /v1/messages` with the same conversation, "
        "system prompt, tools and thinking setting would read, counted with the model's "
        "own tokenizer over its rendered template.",
    ),
]  # fmt: skip
