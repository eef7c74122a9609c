"""`GET /health`: 200 once the default model is loaded."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.routes.common import ok


async def health(request: Request) -> Response:
    services = request.app.state.services
    default = services.registry.default()
    loaded = [m.id for m in services.registry.loaded()]
    return ok({"status": "ok", "model": default.id, "backend": default.backend, "loaded": loaded})


routes = [Route("/health", health, methods=["GET"])]
