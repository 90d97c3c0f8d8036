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


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def bearer_caller(tokens: dict[str, str], authorization: str | None) -> str:
    """The name of the token in an `Authorization` header; 401 without a valid one."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    name = token_name(tokens, given.strip())
    if name is None:
        raise _unauthorized("invalid bearer token")
    return name


def check_webhook_secret(configured: str, given: str | None, carrier: str = SECRET_HEADER) -> None:
    """503 while webhooks are off (no secret configured), 401 for a missing or wrong one
    (`carrier` names where it was expected: the webhook header, or basic auth)."""
    if not configured:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "webhooks are off: LABELLOOP_WEBHOOK_SECRET is unset",
        )
    if not secret_matches(configured, given):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"missing or wrong {carrier}")


def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> str:
    """The name of the caller's token; 401 without a valid one."""
    given = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    return bearer_caller(request.app.state.tokens, given)


def require_webhook_secret(
    request: Request,
    secret: str | None = Header(
        None,
        alias=SECRET_HEADER,
        description="the shared secret `labelloop webhooks register` gave Label Studio",
    ),
) -> None:
    check_webhook_secret(get_ctx(request).settings.webhook_secret.get_secret_value(), secret)
