"""Who may do what: API tokens with a role and an optional project, per-project webhook
secrets.

Roles are ordered, each allowing what the ones below it allow:

- `read`: every GET, artifact downloads included (a model's weights are what the API
  exists to hand to ML engineers; a token that may see metrics may fetch the model);
- `trigger`: start and cancel pipeline runs (what annotation and scheduling tools need);
- `admin`: promote a model version past the promotion gate.

A token may be limited to one project; it then sees nothing of the others. Tokens come
from two places: `LABELLOOP_API_TOKENS` (the environment: admin over all projects, the
way a deployment bootstraps itself) and the `api_token` table (`labelloop tokens
create|list|revoke`), where only a token's sha256 is kept.

Why a plain sha256, not a slow password hash: the tokens made here are 32 random bytes
(256 bits), so no dictionary or brute force can invert the hash; a salt or a slow KDF
protects low-entropy passwords and would only make every request slower. An unsalted
hash also lets a request find its token with one indexed lookup. The digest found is
then compared again in constant time, so the answer's timing does not depend on how
much of a guessed hash matched.

Webhook secrets work the same way: a project may have its own (its sha256 stored on the
project); the shared `LABELLOOP_WEBHOOK_SECRET` serves the projects without one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from labelloop.config import Settings
from labelloop.context import Context
from labelloop.db.models import ApiToken, Project, utcnow
from labelloop.errors import ConflictError, InputError, NotFoundError

ROLES = ("read", "trigger", "admin")
ROLE_HELP = {
    "read": "GET everything: projects, runs, model versions, metrics, artifact downloads",
    "trigger": "read, and start or cancel pipeline runs",
    "admin": "trigger, and promote model versions past the promotion gate",
}
# What a route declares it needs (labelloop.api.auth.access), in its OpenAPI operation too:
# a role, the project's webhook secret, a dashboard log-in (any token: every role reads;
# its project scope applies), or nothing.
ROLE_KEY = "x-labelloop-role"
WEBHOOK = "webhook"
SESSION = "session"
PUBLIC = "public"
KINDS = (*ROLES, WEBHOOK, SESSION, PUBLIC)
TOKEN_PREFIX = "llt_"  # lets secret scanners (and people) recognise a leaked token
TOKEN_BYTES = 32
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often
ENV = "env"
DB = "db"


@dataclass(frozen=True)
class Caller:
    """The holder of a valid token: its name, role and project scope (None: all)."""

    name: str
    role: str
    project_id: int | None = None
    project: str | None = None
    source: str = ENV
    sha256: str = ""

    def allows(self, role: str) -> bool:
        return role_allows(self.role, role)

    def sees(self, project_id: int | None) -> bool:
        return self.project_id is None or project_id == self.project_id


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def role_allows(held: str, needed: str) -> bool:
    """Whether a token with role `held` may use a route that needs `needed`."""
    return ROLES.index(check_role(held)) >= ROLES.index(check_role(needed))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def env_tokens(settings: Settings) -> dict[str, str]:
    """The configured environment tokens, name -> token (empty ones dropped)."""
    return {
        name: token.get_secret_value()
        for name, token in settings.api_tokens.items()
        if token.get_secret_value()
    }


def env_caller(tokens: dict[str, str], given: str) -> Caller | None:
    """The environment token `given` is, compared in constant time against every one (the
    timing says nothing about which came close)."""
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(token.encode(), given.encode()) and found is None:
            found = Caller(name, "admin", source=ENV, sha256=digest(token))
    return found


def authenticate(ctx: Context, tokens: dict[str, str], given: str) -> Caller | None:
    """The caller `given` (a bearer token) belongs to: an environment token, else an
    active database token; None for anything else. Revoked tokens fail at once: the
    database is asked on every request."""
    caller = env_caller(tokens, given)
    if caller is not None:
        return caller
    wanted = digest(given)
    with ctx.db.session() as s:  # one query (and a write at most once a minute)
        row = s.execute(
            select(
                ApiToken.id,
                ApiToken.name,
                ApiToken.role,
                ApiToken.project_id,
                ApiToken.sha256,
                ApiToken.last_used_at,
                Project.name.label("project"),
            )
            .outerjoin(Project, Project.id == ApiToken.project_id)
            .where(ApiToken.sha256 == wanted, ApiToken.revoked_at.is_(None))
        ).first()
        if row is None or not hmac.compare_digest(row.sha256, wanted):
            return None
        now = utcnow()
        if row.last_used_at is None or _aware(row.last_used_at) < now - LAST_USED_EVERY:
            s.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        return Caller(row.name, row.role, row.project_id, row.project, DB, row.sha256)


def _project_name(s, project_id: int | None) -> str | None:
    return s.get(Project, project_id).name if project_id is not None else None


def _db_caller(s, row: ApiToken) -> Caller:
    return Caller(
        row.name, row.role, row.project_id, _project_name(s, row.project_id), DB, row.sha256
    )


def _aware(when: datetime) -> datetime:
    """SQLite hands back naive datetimes (UTC); PostgreSQL aware ones."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def session_keys(ctx: Context, tokens: dict[str, str], name: str) -> list[Caller]:
    """The tokens named `name` (environment, then the active database one): a dashboard
    session names its token and is signed with the token's digest."""
    found = [Caller(name, "admin", sha256=digest(tokens[name]))] if name in tokens else []
    if not name or "\x00" in name:  # no such token name can exist
        return found
    with ctx.db.session() as s:
        row = s.scalars(
            select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        ).first()
        if row is not None:
            found.append(_db_caller(s, row))
    return found


# -- managing database tokens (`labelloop tokens`) ---------------------------------------


def _project_id(s, project: str | None) -> int | None:
    if project is None:
        return None
    found = s.scalar(select(Project.id).where(Project.name == project))
    if found is None:
        raise NotFoundError(f"no project named {project!r}")
    return found


def create_token(ctx: Context, name: str, role: str, project: str | None = None) -> dict[str, Any]:
    """A new token; the returned `token` is its only appearance in clear."""
    name = name.strip()
    if not name:
        raise InputError("a token needs a name (who or what holds it)")
    if len(name) > 200:
        raise InputError("a token name has at most 200 characters")
    check_role(role)
    if name in env_tokens(ctx.settings):  # the runs and promotions it causes would say who
        raise ConflictError(f"a token of LABELLOOP_API_TOKENS is named {name!r}; choose another")
    token = new_secret()
    try:
        with ctx.db.session() as s:
            pid = _project_id(s, project)
            if s.scalar(
                select(ApiToken.id).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            ):
                raise ConflictError(f"an active token is already named {name!r}; revoke it first")
            row = ApiToken(name=name, role=role, project_id=pid, sha256=digest(token))
            s.add(row)
            s.flush()
            out = _describe(row, project)
    except IntegrityError:  # the same name created concurrently
        raise ConflictError(f"an active token is already named {name!r}") from None
    return {**out, "token": token}


def list_tokens(ctx: Context, *, revoked: bool = False) -> list[dict[str, Any]]:
    """The database tokens (never their secrets), oldest first; revoked ones on request."""
    with ctx.db.session() as s:
        query = select(ApiToken, Project.name).outerjoin(Project).order_by(ApiToken.id)
        if not revoked:
            query = query.where(ApiToken.revoked_at.is_(None))
        return [_describe(row, project) for row, project in s.execute(query)]


def revoke_token(ctx: Context, name: str) -> dict[str, Any]:
    """Revoke the active token named `name`: it fails from the next request on, and the
    dashboard sessions made with it end."""
    with ctx.db.session() as s:
        row = s.scalars(
            select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        ).first()
        if row is None:
            raise NotFoundError(f"no active token named {name!r} (`labelloop tokens list`)")
        row.revoked_at = utcnow()
        return _describe(row, _project_name(s, row.project_id))


def active_token_count(ctx: Context) -> int:
    with ctx.db.session() as s:
        return len(s.scalars(select(ApiToken.id).where(ApiToken.revoked_at.is_(None))).all())


def _describe(row: ApiToken, project: str | None) -> dict[str, Any]:
    def iso(when: datetime | None) -> str | None:
        return when.isoformat() if when else None

    return {
        "name": row.name,
        "role": row.role,
        "project": project,
        "created_at": iso(row.created_at),
        "last_used_at": iso(row.last_used_at),
        "revoked_at": iso(row.revoked_at),
    }


# -- webhook secrets -----------------------------------------------------------------------

SecretCheck = Literal["ok", "wrong", "off"]


# A project's own webhook secret (its sha256, or None: it uses the shared one) as last
# read, per database and project, kept only after it let a request in. A webhook showing
# the secret read within SECRET_TTL_S needs no query (Label Studio can send a hundred
# events a second, each would otherwise take a pool connection for it); one that does not
# match is checked against the database again, so a secret set a moment ago works at
# once. The price: a replaced secret keeps working for at most SECRET_TTL_S in each API
# process. Only secrets that let a request in are kept, so made-up names cannot grow it.
SECRET_TTL_S = 2.0
_let_in: dict[tuple[str, str], tuple[float, str | None]] = {}


def check_webhook_secret(ctx: Context, project: str, given: str | None) -> SecretCheck:
    """Whether `given` is the webhook secret of `project`: its own if it has one (the
    shared secret then does not work for it), else the shared LABELLOOP_WEBHOOK_SECRET.
    "off": neither exists, so webhooks cannot be authenticated for this project."""
    if webhook_secret_let_in(ctx, project, given):
        return "ok"
    # A name with a NUL byte cannot exist (PostgreSQL refuses NUL in text): no query.
    own = _own_secret(ctx, project) if "\x00" not in project else None
    verdict = _verdict(ctx, own, given)
    if verdict == "ok":
        _let_in[(ctx.db.url, project)] = (time.monotonic(), own)
    return verdict


def webhook_secret_let_in(ctx: Context, project: str, given: str | None) -> bool:
    """True when `given` is the secret that let a request for `project` in within the last
    SECRET_TTL_S: the answer without a query (False means: ask `check_webhook_secret`)."""
    kept = _let_in.get((ctx.db.url, project))
    if kept is None or time.monotonic() - kept[0] >= SECRET_TTL_S:
        return False
    return _verdict(ctx, kept[1], given) == "ok"


def _verdict(ctx: Context, own: str | None, given: str | None) -> SecretCheck:
    if own:
        given_digest = digest(given) if given is not None else ""
        return "ok" if hmac.compare_digest(own, given_digest) else "wrong"
    shared = ctx.settings.webhook_secret.get_secret_value()
    if not shared:
        return "off"
    return "ok" if secret_matches(shared, given) else "wrong"


def secret_matches(configured: str, given: str | None) -> bool:
    """Constant-time comparison; an unset secret matches nothing."""
    return (
        bool(configured)
        and given is not None
        and hmac.compare_digest(configured.encode(), given.encode())
    )


def _own_secret(ctx: Context, project: str) -> str | None:
    """The sha256 of the project's own webhook secret; None: it has none (or no project)."""
    with ctx.db.session() as s:
        return s.scalar(select(Project.webhook_secret_sha256).where(Project.name == project))


def has_own_webhook_secret(ctx: Context, project: str) -> bool:
    return bool(_own_secret(ctx, project))


def set_webhook_secret(ctx: Context, project: str, secret: str | None) -> None:
    """Give `project` its own webhook secret (its sha256 is stored), or None: back to the
    shared one."""
    with ctx.db.session() as s:
        row = s.scalars(select(Project).where(Project.name == project)).first()
        if row is None:
            raise NotFoundError(f"no project named {project!r}")
        row.webhook_secret_sha256 = digest(secret) if secret else None
    _let_in.pop((ctx.db.url, project), None)  # this process stops taking the old one now
