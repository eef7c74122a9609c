"""Pure ASGI middlewares: the Bearer API-key check on `/v1`, and the request-body cap."""

from __future__ import annotations

import hashlib
import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import AuthenticationFailed, PomarError, RequestTooLarge


class APIKeyMiddleware:
    """Refuses `/v1/...` requests whose `Authorization: Bearer` key is missing or wrong."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        # compared as digests: the same length whatever the client sends
        self._digest = hashlib.sha256(api_key.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/v1"):
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            # constant-time comparison: neither the key nor its length may leak through timing
            given = hashlib.sha256(token.strip()).digest()
            if not hmac.compare_digest(given, self._digest) or scheme.lower() != b"bearer":
                if scope["type"] == "websocket":  # no such routes; refused all the same
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _refuse(
                    send, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'."
                )
                return
        await self.app(scope, receive, send)


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
            await _send_error(send, self._too_large())
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


async def _refuse(send: Send, message: str) -> None:
    await _send_error(send, AuthenticationFailed(message), [(b"www-authenticate", b"Bearer")])


async def _send_error(
    send: Send, error: PomarError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(error.to_envelope()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": headers + (extra or []),
        }
    )
    await send({"type": "http.response.body", "body": body})
