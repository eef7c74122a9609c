"""`GET /openapi.json`: pomar's OpenAPI document, built once per app from the protocol models."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.openapi import build_openapi


async def openapi_document(request: Request) -> Response:
    state = request.app.state
    document = getattr(state, "openapi_document", None)
    if document is None:
        document = state.openapi_document = build_openapi()
    return JSONResponse(document)


routes = [Route("/openapi.json", openapi_document, methods=["GET"])]
