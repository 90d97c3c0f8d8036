"""What a request must show before its body is read: credentials, within the size limit.

FastAPI reads and parses a body before it solves an endpoint's dependencies, so a route's
token check alone comes after the whole upload: an anonymous client could make the server
read (and hold) any amount. `CredentialsBeforeBody` refuses a request that carries a body
without a valid bearer token (or, on webhook paths, the webhook secret) from its headers
alone; the Label Studio ML backend's paths (`/ml/`) need its basic auth (the webhook
secret as password), and the dashboard's log-in form, whose body IS the credential, is
only bounded by the size limit. The size limit itself is the app's `max_body_size`
(Starlette's body limit): 413 from the Content-Length before anything is read, or as soon
as a chunked body passes it.
Every route that takes a body needs credentials, so no legitimate request is turned away.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from labelloop.api.auth import bearer_caller, check_webhook_secret
from labelloop.labelstudio.webhooks import SECRET_HEADER

WEBHOOK_PREFIX = "/webhooks/"
ML_BACKEND_PREFIX = "/ml/"
LOGIN_PATH = "/login"


def basic_password(authorization: str | None) -> str | None:
    """The password of an `Authorization: Basic ...` header, or None."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


def carries_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    return chunked or (length is not None and length.strip() not in ("", "0"))


class CredentialsBeforeBody:
    """Pure ASGI (no body buffering): answers 401 / 503 before the app reads a body."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: Callable[[], dict[str, str]],
        webhook_secret: Callable[[], str],
    ) -> None:
        self.app, self.tokens, self.webhook_secret = app, tokens, webhook_secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            if carries_body(headers):
                path = scope["path"]
                try:
                    if path == LOGIN_PATH:
                        pass
                    elif path.startswith(WEBHOOK_PREFIX):
                        check_webhook_secret(self.webhook_secret(), headers.get(SECRET_HEADER))
                    elif path.startswith(ML_BACKEND_PREFIX):
                        password = basic_password(headers.get("authorization"))
                        check_webhook_secret(self.webhook_secret(), password, "basic auth")
                    else:
                        bearer_caller(self.tokens(), headers.get("authorization"))
                except HTTPException as exc:
                    await _refuse(send, exc)
                    return
        await self.app(scope, receive, send)


async def _refuse(send: Send, exc: HTTPException) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The unread body is not drained: the connection ends with this answer.
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
