"""`GET /health`: 200 once the default model is loaded."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.common import Health
from server.routes.common import ok
from server.routes.spec import api_route

#: how long /health waits for an engine's counters: a runner answers them at once,
#: beside its generations, unless it is stuck
STATS_TIMEOUT_S = 2.0


async def _stats(engine: Any) -> dict[str, Any]:
    """The engine's counters, read off the event loop (a runner's take a round trip); a
    runner that does not answer in time gets only what the server knows of it."""
    try:
        stats: dict[str, Any] = await asyncio.wait_for(
            asyncio.to_thread(engine.stats), STATS_TIMEOUT_S
        )
    except TimeoutError:
        stats = {"max_batch_size": engine.max_concurrency}
        if getattr(engine, "pid", None) is not None:
            stats["runner_pid"] = engine.pid
    return stats


async def health(request: Request) -> Response:
    services = request.app.state.services
    default = services.registry.default()
    models = services.registry.loaded()
    restarts = services.registry.supervisor.restarts
    engines = []
    for m in models:
        stats = {"model": m.id, "backend": m.engine.backend, **(await _stats(m.engine))}
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
