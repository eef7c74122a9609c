"""The shared shape of the generating routes (chat, completions): JSON or SSE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.routes.common import json_response, sse_response, unless_disconnected
from server.services.generation import GenerationRequest, GenerationService, begin


async def generate(
    request: Request, body: GenerationRequest, service: GenerationService, *, exclude_none: bool
) -> Response:
    """Lease and prepare (services.generation), then answer as JSON or as an SSE stream."""
    generation = await begin(request.app.state.services.registry, body, service)
    try:
        if body.stream:
            return sse_response(generation.stream(), exclude_none=exclude_none)
        return json_response(await unless_disconnected(request, generation.complete()))
    finally:
        generation.release_unless_streaming()
