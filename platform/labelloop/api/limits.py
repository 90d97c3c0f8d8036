"""What a request must show before its body is read: credentials, within the size limit.

FastAPI reads and parses a body before it solves an endpoint's dependencies, so a route's
token check alone comes after the whole upload: an anonymous client could make the server
read (and hold) any amount. `CredentialsBeforeBody` refuses a request that carries a body
without a valid bearer token (or, on webhook paths, the project's webhook secret) from its
headers alone; the Label Studio ML backend's paths (`/ml/<project>/`) need its basic auth
(the project's webhook secret as password), and the dashboard's log-in form, whose body
IS the credential, is only bounded by the size limit. The size limit itself is the app's
`max_body_size` (Starlette's body limit): 413 from the Content-Length before anything is
read, or as soon as a chunked body passes it.
Every route that takes a body needs credentials, so no legitimate request is turned away.
Only validity is checked here (a token's role and project are the route's business); the
database lookups run in a worker thread, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

import anyio.to_thread
from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from labelloop.api.auth import CALLER, bearer_caller, settled_caller
from labelloop.context import Context
from labelloop.labelstudio.webhooks import (
    BASIC,
    SECRET_HEADER,
    check_request_secret,
    secret_settled,
)

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

    def __init__(self, app: ASGIApp, ctx: Context, tokens: Callable[[], dict[str, str]]) -> None:
        self.app, self.ctx, self.tokens = app, ctx, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            if carries_body(headers):
                state = scope.setdefault("state", {})
                try:
                    if not self.settled(scope["path"], headers, state):
                        await anyio.to_thread.run_sync(self.check, scope["path"], headers, state)
                except HTTPException as exc:
                    await _refuse(send, exc)
                    return
        await self.app(scope, receive, send)

    def settled(self, path: str, headers: Headers, state: dict) -> bool:
        """True when the credentials are known good without a query (an environment token,
        a webhook secret that let a request in a moment ago): no worker thread needed."""
        if path == LOGIN_PATH:
            return True
        secret = _secret(path, headers)
        if secret is not None:
            return secret_settled(self.ctx, state, *secret[:2])
        found = settled_caller(state, self.tokens(), headers.get("authorization"))
        if found is not None:
            state[CALLER] = found
        return found is not None

    def check(self, path: str, headers: Headers, state: dict) -> None:
        """Raises the HTTPException a request without valid credentials gets; what it
        found is kept in the request's `state` for the route (`auth.CALLER`,
        `webhooks.CHECKED_PROJECT`), which then does not look it up again."""
        if path == LOGIN_PATH:
            return
        secret = _secret(path, headers)
        if secret is not None:
            check_request_secret(self.ctx, state, *secret)
        else:
            state[CALLER] = bearer_caller(self.ctx, self.tokens(), headers.get("authorization"))


def _secret(path: str, headers: Headers) -> tuple[str, str | None, str] | None:
    """On the paths Label Studio calls: (project, the secret given, where it is carried);
    None on the others, which need a bearer token."""
    parts = path.split("/")
    if path.startswith(WEBHOOK_PREFIX):  # /webhooks/labelstudio/<project>
        project = parts[3] if len(parts) > 3 else ""
        return project, headers.get(SECRET_HEADER), SECRET_HEADER
    if path.startswith(ML_BACKEND_PREFIX):  # /ml/<project>/...
        project = parts[2] if len(parts) > 2 else ""
        return project, basic_password(headers.get("authorization")), BASIC
    return None


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
