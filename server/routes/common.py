"""Helpers every route uses: JSON bodies in, JSON out."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.errors import InvalidRequest, PomarError

T = TypeVar("T")

#: deepest nesting of arrays/objects a JSON body may have: deeper input would only serve
#: to exhaust the recursion of the parser, the validators or the grammar compiler
MAX_JSON_DEPTH = 128
_SURROGATE = re.compile("[\ud800-\udfff]")

log = logging.getLogger(__name__)


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # e.g. an integer over Python's 4300-digit conversion limit
        raise InvalidRequest("The request body holds a number too large to read.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _check_tree(body)
    return body


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body is nested too deeply (at most {MAX_JSON_DEPTH} levels of arrays "
        "and objects).",
    )


def _check_tree(body: dict[str, Any]) -> None:
    """Refuse nesting deeper than `MAX_JSON_DEPTH` and strings that are not Unicode text.

    JSON may escape lone UTF-16 surrogates (`"\\ud800"`), which no tokenizer can encode.
    Iterative, so that the check itself cannot run out of recursion.
    """
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidRequest(
                    "The request body holds a string with an unpaired UTF-16 surrogate "
                    "escape, which is not valid Unicode text."
                )
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((value, depth + 1) for value in item.values() if _nested(value))
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item if _nested(value))


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list | str)


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


#: how long a stream may take to send its final event once the server is shutting down
#: (under uvicorn's `timeout_graceful_shutdown`, see `server.cli.serve`)
SHUTDOWN_GRACE_S = 2.0


class _ShuttingDown(Exception):
    """The server is stopping: end the stream with a final event now."""


def sse_response(chunks: AsyncIterator[BaseModel], *, exclude_none: bool) -> Response:
    """Stream pydantic chunks as SSE `data:` events, ending with `data: [DONE]`.

    An error mid-stream (the status line is already sent) becomes an error event in
    the OpenAI envelope, then `[DONE]`; internals are logged, never sent. A server
    shutting down (SIGTERM) stops generating and ends the stream the same way, with a
    `server_shutting_down` error event and `[DONE]`, rather than dropping the connection.
    """
    return event_stream(
        chunks,
        lambda chunk: {"data": chunk.model_dump_json(exclude_none=exclude_none)},
        lambda error: {"data": json.dumps(error.to_envelope())},
        last={"data": "[DONE]"},
    )


def event_stream(
    items: AsyncIterator[T],
    encode: Callable[[T], dict[str, str]],
    error: Callable[[PomarError], dict[str, str]],
    *,
    last: dict[str, str] | None = None,
    ping: Callable[[], ServerSentEvent] | None = None,
) -> Response:
    """Stream `items` as SSE events (`encode` makes each one's `data`, and `event` if any).

    The shape of a wire's stream, its guarantees shared: an error mid-stream, or the
    server shutting down (SIGTERM, a `server_shutting_down` error), ends the stream with
    the event `error` makes of it (internals are logged, never sent), then `last` if
    given; a client going away stops generation. `ping` makes the keep-alive event sent
    every 15 s (an SSE comment without it).
    """
    shutdown = anyio.Event()

    async def events() -> AsyncIterator[bytes | dict[str, str]]:
        items_of = _Interruptible(asyncio.ensure_future(shutdown.wait()))
        iterator = aiter(items)
        try:
            while True:
                item = await items_of.next(iterator)
                if item is None:
                    break
                yield sse_bytes(encode(item))
        except _ShuttingDown:
            message = "The server is shutting down; the reply was cut short."
            yield error(PomarError(message, code="server_shutting_down"))
        except PomarError as exc:
            yield error(exc)
        except Exception:
            log.exception("stream failed")
            yield error(PomarError("The server had an error while generating."))
        finally:
            items_of.close()
            with anyio.CancelScope(shield=True):  # closes even while being cancelled
                await _aclose(iterator)
        if last is not None:
            yield last

    return EventSourceResponse(
        events(),
        sep="\n",
        ping=15,
        ping_message_factory=ping,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
    )


def sse_bytes(fields: dict[str, str]) -> bytes | dict[str, str]:
    """One event's `event:` and `data:` lines as sse-starlette writes them (`sep` "\\n"),
    made here for the common event, a token's: a one-line `data`, maybe an `event` name.
    Any other goes to sse-starlette's `ServerSentEvent` (a regular expression and a string
    buffer an event, time taken from llama.cpp's threads on 2 cores)."""
    data = fields.get("data")
    event = fields.get("event")
    if data is None or len(fields) != (1 if event is None else 2) or _breaks(data):
        return fields
    if event is None:
        return f"data: {data}\n\n".encode()
    if _breaks(event):
        return fields
    return f"event: {event}\ndata: {data}\n\n".encode()


def _breaks(text: str) -> bool:
    return "\n" in text or "\r" in text


class _Interruptible:
    """A stream's items, awaited in the task that sends them; `_ShuttingDown` once `stop`
    (the server's shutdown) is done.

    A shutdown while the task waits for an item cancels the task, which cancels into the
    items' generator (its consumer-gone path frees the engine) and comes out here as
    `_ShuttingDown`; one while an item is being sent is seen at the next item. Racing
    each item against `stop` instead (a task and an `asyncio.wait` an item) cost two more
    turns of the event loop a token, CPU that 2 cores' llama.cpp threads need.
    """

    def __init__(self, stop: asyncio.Future[Any]) -> None:
        self._stop = stop
        self._task = asyncio.current_task()
        self._waiting = False
        #: the task was cancelled for the shutdown (and not yet uncancelled)
        self._interrupted = False
        stop.add_done_callback(self._on_stop)

    def _on_stop(self, stop: asyncio.Future[Any]) -> None:
        if not stop.cancelled() and self._waiting and self._task is not None:
            self._interrupted = True
            self._task.cancel()

    async def next(self, iterator: AsyncIterator[T]) -> T | None:
        """The next item, None at the end, or `_ShuttingDown`."""
        if self._stop.done() and not self._stop.cancelled():
            self._shutting_down()
        self._waiting = True
        try:
            return await anext(iterator)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            if not self._interrupted:
                raise  # the client went away: the cancellation goes on
            self._shutting_down()
        finally:
            self._waiting = False

    def _shutting_down(self) -> NoReturn:
        """Raise `_ShuttingDown`, taking back the task's own cancellation first (3.11+
        counts them: a pending one would cancel the final event's send)."""
        if self._interrupted:
            self._interrupted = False
            uncancel = getattr(self._task, "uncancel", None)
            if uncancel is not None:
                uncancel()
        raise _ShuttingDown

    def close(self) -> None:
        """Stop watching for the shutdown."""
        self._stop.remove_done_callback(self._on_stop)
        self._stop.cancel()


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            log.warning("closing a stream failed", exc_info=True)
