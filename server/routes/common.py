"""Helpers every route uses: JSON bodies in, JSON out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.errors import InvalidRequest, PomarError, error_envelope

T = TypeVar("T")

log = logging.getLogger(__name__)


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialize a protocol object."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


async def unless_disconnected(request: Request, work: Awaitable[T], poll: float = 0.25) -> T:
    """Await `work`, cancelling it if the client goes away first (frees the worker)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()


def ok(payload: dict[str, Any]) -> JSONResponse:
    """A small JSON answer."""
    return JSONResponse(payload)


def sse_response(chunks: AsyncIterator[BaseModel], *, exclude_none: bool) -> Response:
    """Stream pydantic chunks as SSE `data:` events, ending with `data: [DONE]`.

    An error mid-stream (the status line is already sent) becomes an error event in
    the OpenAI envelope, then `[DONE]`; internals are logged, never sent.
    """

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for chunk in chunks:
                yield {"data": chunk.model_dump_json(exclude_none=exclude_none)}
        except PomarError as exc:
            yield {"data": json.dumps(exc.to_envelope())}
        except Exception:
            log.exception("stream failed")
            envelope = error_envelope("The server had an error while generating.", "server_error")
            yield {"data": json.dumps(envelope)}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), sep="\n", ping=15)
