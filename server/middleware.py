"""Pure ASGI middlewares: the API-key check on `/v1`, the request-body cap, request metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Protocol

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import AuthenticationFailed, PomarError, RequestTooLarge, envelope_for


class APIKeyMiddleware:
    """Refuses `/v1/...` requests (and those to the paths in `also`) whose key is missing
    or wrong.

    The key comes as `Authorization: Bearer <key>` (OpenAI's clients) or as `x-api-key:
    <key>` (Anthropic's); either one that matches lets the request through.
    """

    def __init__(self, app: ASGIApp, api_key: str, also: frozenset[str] = frozenset()) -> None:
        self.app = app
        # compared as digests: the same length whatever the client sends
        self._digest = hashlib.sha256(api_key.encode()).digest()
        self._also = also

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        keyed = path.startswith("/v1") or path.rstrip("/") in self._also
        if scope["type"] in ("http", "websocket") and keyed:
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            # constant-time comparisons: neither the key nor its length may leak through timing
            bearer = hmac.compare_digest(self._hash(token), self._digest)
            bearer = bearer and scheme.lower() == b"bearer"
            header = hmac.compare_digest(self._hash(headers.get(b"x-api-key")), self._digest)
            if not (bearer or header):
                if scope["type"] == "websocket":  # no such routes; refused all the same
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _refuse(
                    send,
                    "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>' "
                    "or as 'x-api-key: <key>'.",
                    scope["path"],
                )
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _hash(token: bytes | None) -> bytes:
        # no header at all never matches: its digest is of a byte no key holds
        return hashlib.sha256(b"\x00" if token is None else token.strip()).digest()


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with a 413, before reading them whole.

    Checked on the declared Content-Length and again on the bytes as they arrive (a
    chunked body has no length). Paths in `exempt` (file uploads) have their own cap.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: frozenset[str]) -> None:
        self.app = app
        self._max = max_bytes
        self._exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in self._exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        # a length too long to be a number worth reading is over the cap too
        if declared.isdigit() and (len(declared) > 18 or int(declared) > self._max):
            await _send_error(send, self._too_large(), scope["path"])
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(
            f"The request body is larger than this server accepts ({self._max} bytes; "
            "POMAR_MAX_BODY_BYTES)."
        )


class RequestObserver(Protocol):
    """Hears each answered request (the server's metrics)."""

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """`route` is the route's path template (`/v1/files/{file_id}`), never the URL."""


#: methods kept as they are in a request's `method` label; any other is "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Tells `observer` of every HTTP request once it is answered: its route template,
    method, status and duration (a stream's lasts until its last event).

    Outermost, so refusals by the other middlewares (401, 413) are counted too; a URL
    that no route matches is counted under the route `unmatched`.
    """

    def __init__(self, app: ASGIApp, observer: RequestObserver) -> None:
        self.app = app
        self._observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            # an error the app's outer handler turns into a 500 (unless the answer began)
            status = status or 500
            raise
        finally:
            method = scope.get("method", "GET")
            self._observer.request(
                _route_template(scope),
                method if method in _METHODS else "other",
                # a client that left before any answer: nginx's "client closed request"
                status or 499,
                time.perf_counter() - started,
            )


def _route_template(scope: Scope) -> str:
    """The path template of the route that answered (or would have: a refused request)."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        routes: list[BaseRoute] = getattr(app, "routes", [])
        found: dict[Match, BaseRoute | None] = {Match.FULL: None, Match.PARTIAL: None}
        for candidate in routes:
            match = candidate.matches(scope)[0]
            if match is not Match.NONE and found[match] is None:
                found[match] = candidate
        # a route whose method does not match (the 405) answered for its path too
        route = found[Match.FULL] or found[Match.PARTIAL]
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


async def _refuse(send: Send, message: str, path: str) -> None:
    challenge = [(b"www-authenticate", b"Bearer")]
    await _send_error(send, AuthenticationFailed(message), path, challenge)


async def _send_error(
    send: Send, error: PomarError, path: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    envelope = envelope_for(path, error.to_envelope(), error.status_code)
    body = json.dumps(envelope).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": headers + (extra or []),
        }
    )
    await send({"type": "http.response.body", "body": body})
