"""`POST /v1/completions` (legacy completions), JSON or server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import PomarError, error_envelope
from server.protocol.completions import CompletionRequest
from server.routes.common import json_body, json_response, unless_disconnected
from server.services.completions import CompletionService, PreparedCompletion

log = logging.getLogger(__name__)


async def completions(request: Request) -> Response:
    body = await json_body(request)
    completion_request = CompletionRequest.model_validate(body)
    service: CompletionService = request.app.state.services.completions
    prepared = service.prepare(completion_request)
    if completion_request.stream:
        return EventSourceResponse(_events(service, prepared), sep="\n", ping=15)
    completion = await unless_disconnected(request, service.complete(prepared))
    return json_response(completion)


async def _events(
    service: CompletionService, prepared: PreparedCompletion
) -> AsyncIterator[dict[str, str]]:
    """SSE data events; an error mid-stream becomes an error event, then `[DONE]`."""
    try:
        async for chunk in service.stream(prepared):
            yield {"data": chunk.model_dump_json()}
    except PomarError as exc:
        yield {"data": json.dumps(exc.to_envelope())}
    except Exception:
        log.exception("stream failed")
        envelope = error_envelope("The server had an error while generating.", "server_error")
        yield {"data": json.dumps(envelope)}
    yield {"data": "[DONE]"}


routes = [Route("/v1/completions", completions, methods=["POST"])]
