"""Log-in with an API token, kept in a signed cookie.

The cookie holds the token's name and an HMAC of it keyed by the token itself, so the
server stores no sessions, the token never travels again after log-in, and changing or
removing a token in LABELLOOP_API_TOKENS ends every session made with it."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from fastapi import Request

COOKIE = "labelloop_session"
MAX_AGE_S = 7 * 24 * 3600


class LoginRequired(Exception):
    """Raised by `current_user`; the app answers with a redirect to the log-in page."""

    def __init__(self, next_url: str):
        self.next_url = next_url


def _sign(token: str, name: str) -> str:
    return hmac.new(token.encode(), f"labelloop-web:{name}".encode(), hashlib.sha256).hexdigest()


def session_cookie(token: str, name: str) -> str:
    return f"{name}:{_sign(token, name)}"


def user_from_cookie(tokens: dict[str, str], value: str | None) -> str | None:
    if not value or ":" not in value:
        return None
    name, _, sig = value.rpartition(":")
    token = tokens.get(name)
    if token is None:
        hmac.compare_digest(sig, sig)  # same work whether or not the name exists
        return None
    return name if hmac.compare_digest(_sign(token, name), sig) else None


def current_user(request: Request) -> str:
    """The logged-in token name; pages depend on this."""
    user = user_from_cookie(request.app.state.tokens, request.cookies.get(COOKIE))
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(quote(target, safe="/?=&"))
    return user
