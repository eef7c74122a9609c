"""The shared shape of the generating routes (chat, completions): lease, prepare, answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from server.engine.resident import LoadedModel
from server.engine.served import ModelRegistry
from server.routes.common import json_response, sse_response, unless_disconnected


class GenerationRequest(Protocol):
    """What `generate` reads of a validated request."""

    model: str
    stream: bool | None


class GenerationService(Protocol):
    """A service that checks a request on a model, then streams or completes it."""

    def prepare(self, request: Any, model: LoadedModel) -> Any: ...

    def stream(self, prepared: Any) -> AsyncIterator[BaseModel]: ...

    async def complete(self, prepared: Any) -> BaseModel: ...


async def generate(
    request: Request, body: GenerationRequest, service: GenerationService, *, exclude_none: bool
) -> Response:
    """Lease the model (loading it if need be), prepare, then answer as JSON or SSE.

    The lease lasts until the JSON is built, or until a stream's last event, so the model
    is not unloaded under a running request.
    """
    registry: ModelRegistry = request.app.state.services.registry
    lease = await registry.acquire(body.model)
    try:
        prepared = service.prepare(body, lease.model)
        if body.stream:
            return sse_response(lease.hold(service.stream(prepared)), exclude_none=exclude_none)
        return json_response(await unless_disconnected(request, service.complete(prepared)))
    finally:
        lease.release_unless_streaming()
