"""Bearer tokens for ML engineers, a shared secret for Label Studio's webhooks.

Tokens come from Settings (`LABELLOOP_API_TOKENS`, a JSON object name -> token): the name
is recorded with what the holder triggers. Every comparison is constant-time and every
configured token is compared, so the timing says nothing about which one was close."""

from __future__ import annotations

import hmac

from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labelloop.context import Context
from labelloop.labelstudio.webhooks import SECRET_HEADER, secret_matches

bearer = HTTPBearer(
    auto_error=False,
    description="A token from LABELLOOP_API_TOKENS: `Authorization: Bearer <token>`.",
)


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def token_name(tokens: dict[str, str], given: str) -> str | None:
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(token.encode(), given.encode()) and found is None:
            found = name
    return found


def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> str:
    """The name of the caller's token; 401 without a valid one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    name = token_name(request.app.state.tokens, credentials.credentials)
    if name is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


def require_webhook_secret(
    request: Request,
    secret: str | None = Header(
        None,
        alias=SECRET_HEADER,
        description="the shared secret `labelloop webhooks register` gave Label Studio",
    ),
) -> None:
    configured = get_ctx(request).settings.webhook_secret.get_secret_value()
    if not configured:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "webhooks are off: LABELLOOP_WEBHOOK_SECRET is unset",
        )
    if not secret_matches(configured, secret):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"missing or wrong {SECRET_HEADER}")
