"""`POST /v1/chat/completions`, JSON or server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import PomarError, error_envelope
from server.protocol.chat import ChatCompletionRequest
from server.routes.common import json_body, json_response, unless_disconnected
from server.services.chat import ChatService, PreparedChat

log = logging.getLogger(__name__)


async def chat_completions(request: Request) -> Response:
    body = await json_body(request)
    chat_request = ChatCompletionRequest.model_validate(body)
    service: ChatService = request.app.state.services.chat
    prepared = service.prepare(chat_request)
    if chat_request.stream:
        return EventSourceResponse(_events(service, prepared), sep="\n", ping=15)
    completion = await unless_disconnected(request, service.complete(prepared))
    return json_response(completion)


async def _events(service: ChatService, prepared: PreparedChat) -> AsyncIterator[dict[str, str]]:
    """SSE data events; an error mid-stream becomes an error event, then `[DONE]`."""
    try:
        async for chunk in service.stream(prepared):
            yield {"data": chunk.model_dump_json(exclude_none=True)}
    except PomarError as exc:
        yield {"data": json.dumps(exc.to_envelope())}
    except Exception:
        log.exception("stream failed")
        envelope = error_envelope("The server had an error while generating.", "server_error")
        yield {"data": json.dumps(envelope)}
    yield {"data": "[DONE]"}


routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
