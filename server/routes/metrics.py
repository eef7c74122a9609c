"""`GET /metrics`: the server's metrics in Prometheus's text format (behind the API key)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.routes.spec import api_route
from server.services.metrics import CONTENT_TYPE


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


routes = [
    api_route(
        "/metrics", metrics, "GET",
        operation_id="metrics", summary="Prometheus metrics", tag="pomar",
        binary=True, media_type="text/plain",
        description="A pomar endpoint (not in OpenAI's API): the server's metrics in "
        "Prometheus's text format (0.0.4) — requests by route and status, tokens generated, "
        "time to first token and between tokens, queue depth and running requests per model, "
        "prompt-cache reuse, resident memory, fine-tuning jobs by status. Needs the API key "
        "when the server has one.",
    ),
]  # fmt: skip
