"""`GET /health`: 200 once the default model is loaded."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.common import Health
from server.routes.common import ok
from server.routes.spec import api_route


async def health(request: Request) -> Response:
    services = request.app.state.services
    default = services.registry.default()
    models = services.registry.loaded()
    restarts = services.registry.supervisor.restarts
    engines = []
    for m in models:
        stats = {"model": m.id, "backend": m.engine.backend, **m.engine.stats()}
        if "runner_pid" in stats:
            stats["runner_restarts"] = restarts.get(m.id, 0)
        engines.append(stats)
    body = {"status": "ok", "model": default.id, "backend": default.backend}
    failed = services.registry.supervisor.failed()
    return ok({**body, "loaded": [m.id for m in models], "engines": engines, "failed": failed})


routes = [
    api_route(
        "/health", health, "GET",
        operation_id="health", summary="The default model is loaded", tag="pomar",
        response=Health, public=True,
        description="A pomar endpoint (not in OpenAI's API): 200 once the default model "
        "is loaded; the models in memory now.",
    ),
]  # fmt: skip
