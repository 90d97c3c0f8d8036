"""Log-in with an API token, kept in a signed cookie.

The cookie holds the token's name and an HMAC of it keyed by the token's sha256 (all the
database keeps of a token), so the server stores no sessions and the token never travels
again after log-in. Every page checks the cookie against the tokens as they are now:
revoking a token (`labelloop tokens revoke`), or changing or removing it in
LABELLOOP_API_TOKENS, ends every session made with it. A session has its token's project
scope: a token limited to one project sees only that project's pages."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from fastapi import Depends, Request

from labelloop.access import Caller, session_keys
from labelloop.api.auth import ADDRESSED, Addressed, check_scope, get_ctx
from labelloop.db.models import AnnotationRound, ModelVersion

COOKIE = "labelloop_session"
MAX_AGE_S = 7 * 24 * 3600
# What the pages address by id or name, besides a project by name.
PAGES_ADDRESS = {
    **ADDRESSED,
    "round_id": Addressed(AnnotationRound.id, AnnotationRound.project_id, "no round with id {}"),
    "name": Addressed(ModelVersion.name, ModelVersion.project_id, "no model version named {!r}"),
}


class LoginRequired(Exception):
    """Raised by `current_user`; the app answers with a redirect to the log-in page."""

    def __init__(self, next_url: str):
        self.next_url = next_url


def _sign(key: str, name: str) -> str:
    return hmac.new(key.encode(), f"labelloop-web:{name}".encode(), hashlib.sha256).hexdigest()


def session_cookie(caller: Caller) -> str:
    return f"{caller.name}:{_sign(caller.sha256, caller.name)}"


def user_from_cookie(candidates: list[Caller], value: str | None) -> Caller | None:
    """The token (among those of the cookie's name) whose digest signed the cookie."""
    if not value or ":" not in value:
        return None
    name, _, sig = value.rpartition(":")
    found = None
    for caller in candidates:
        if caller.name == name and hmac.compare_digest(_sign(caller.sha256, name), sig):
            found = found or caller
    return found


def cookie_name(value: str | None) -> str:
    return (value or "").rpartition(":")[0]


def current_caller(request: Request) -> Caller:
    """The logged-in token, checked against the project the page addresses."""
    value = request.cookies.get(COOKIE)
    ctx = get_ctx(request)
    name = cookie_name(value)
    caller = user_from_cookie(session_keys(ctx, request.app.state.tokens, name), value)
    if caller is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(quote(target, safe="/?=&"))
    check_scope(ctx, caller, request.path_params, PAGES_ADDRESS)
    request.state.caller = caller
    return caller


def current_user(caller: Caller = Depends(current_caller)) -> str:
    """The logged-in token's name, for the pages that show only that."""
    return caller.name
