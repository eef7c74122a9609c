"""Bearer API-key check for every `/v1` route, as a pure ASGI middleware."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import AuthenticationFailed


class APIKeyMiddleware:
    """Refuses `/v1/...` requests whose `Authorization: Bearer` key is missing or wrong."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            # constant-time comparison: the key must not leak through timing
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                await _refuse(
                    send, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'."
                )
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, message: str) -> None:
    error = AuthenticationFailed(message)
    body = json.dumps(error.to_envelope()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
