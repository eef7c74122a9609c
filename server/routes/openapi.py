"""`GET /openapi.json`: pomar's OpenAPI document, built once per app from the protocol models."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.openapi import build_openapi
from server.routes.spec import api_route


async def openapi_document(request: Request) -> Response:
    state = request.app.state
    document = getattr(state, "openapi_document", None)
    if document is None:
        document = state.openapi_document = build_openapi(request.app.routes)
    return JSONResponse(document)


routes = [
    api_route(
        "/openapi.json", openapi_document, "GET",
        operation_id="openapi", summary="This document", tag="pomar", public=True,
        description="A pomar endpoint (not in OpenAI's API): this OpenAPI document.",
    ),
]  # fmt: skip
