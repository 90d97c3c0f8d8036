"""Bearer tokens with a role and a project scope; webhook secrets for Label Studio.

Every route declares what it needs in one place, `**access(KIND)` in its decorator: a
role (`read` < `trigger` < `admin`, labelloop.access), `webhook` (the project's webhook
secret) or `public`. That adds the check as a dependency and states the kind in the
OpenAPI document (`x-labelloop-role`, and a line in the description). The routers this
layer cannot give a dependency to state the kind next to their own check: the ML backend
(`webhook`, labelloop.labelstudio.ml_backend) and the dashboard's pages (`session`,
labelloop.web.session); tests/unit/test_access.py checks every route's check matches. A missing or
unknown token gets 401; a valid token whose role or project does not reach the route
gets 403 naming what is needed, or 404 for an object of another project addressed by
its id (its existence is not revealed)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Integer, select

from labelloop.access import (
    KINDS,
    PUBLIC,
    ROLE_HELP,
    ROLE_KEY,
    ROLES,
    SESSION,
    WEBHOOK,
    Caller,
    authenticate,
    env_caller,
)
from labelloop.context import Context
from labelloop.db.models import ModelVersion, PipelineRun
from labelloop.labelstudio.webhooks import SECRET_HEADER, verify_request_secret

bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`: a token made by `labelloop tokens create "
    "NAME --role ROLE [--project P]`, or one of LABELLOOP_API_TOKENS (admin, all projects). "
    "Roles, each allowing what the ones before it allow: "
    + "; ".join(f"`{r}`: {ROLE_HELP[r]}" for r in ROLES)
    + ". A token limited to a project sees only that project. Each operation states the "
    f"role it needs (`{ROLE_KEY}`); 401: no valid token, 403: role or project insufficient.",
)


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def bearer_caller(ctx: Context, tokens: dict[str, str], authorization: str | None) -> Caller:
    """The caller of an `Authorization` header; 401 without a valid token."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    caller = authenticate(ctx, tokens, given.strip())
    if caller is None:
        raise _unauthorized("invalid bearer token")
    return caller


# The request state's key for the caller found before the body was read (api.limits).
CALLER = "labelloop_caller"


def settled_caller(state: dict, tokens: dict[str, str], authorization: str | None) -> Caller | None:
    """The caller when no query is needed: found before the body was read, or an
    environment token. Dependencies are async and take a worker thread only for a query:
    at a hundred requests a second the threads, not the work, were what requests queued
    for."""
    found = state.get(CALLER)
    if isinstance(found, Caller):
        return found
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return env_caller(tokens, given.strip())
    return None


async def current_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Caller:
    """The holder of the request's bearer token; 401 without a valid one."""
    given = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    tokens = request.app.state.tokens
    found = settled_caller(request.scope.get("state", {}), tokens, given)
    if found is not None:
        return found
    return await run_in_threadpool(bearer_caller, get_ctx(request), tokens, given)


def _forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


@dataclass(frozen=True)
class Addressed:
    """A path parameter that names an object of one project: the column it matches, the
    column holding the object's project, the 404 message."""

    key: Any
    project_id: Any
    missing: str


ADDRESSED = {
    "run_id": Addressed(PipelineRun.id, PipelineRun.project_id, "no pipeline run with id {}"),
    "model_version_id": Addressed(
        ModelVersion.id, ModelVersion.project_id, "no model version with id {}"
    ),
}


def check_scope(
    ctx: Context,
    caller: Caller,
    path_params: dict[str, Any],
    addressed: dict[str, Addressed] = ADDRESSED,
) -> None:
    """A token limited to a project reaches nothing of another: 403 for a project named in
    the path, 404 for an object of another project addressed by its id (or name)."""
    if caller.project_id is None:
        return
    project = path_params.get("project")
    if project is not None and project != caller.project:
        raise _forbidden(
            f"token {caller.name!r} is limited to project {caller.project!r}, not {project!r}"
        )
    for param, where in addressed.items():
        value = path_params.get(param)
        if value is None:
            continue
        if isinstance(where.key.type, Integer):
            try:
                value = int(value)
            except ValueError:
                continue  # not an id: the route's validation answers 422
            if not -(2**31) <= value < 2**31:
                continue  # out of the column's range: the route answers 404 / 422
        with ctx.db.session() as s:
            owner = s.scalar(select(where.project_id).where(where.key == value))
        if owner is not None and owner != caller.project_id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, where.missing.format(value))


@functools.cache
def require_role(role: str) -> Callable[..., Caller]:
    """The dependency of routes that need `role`: the caller, once authenticated (401),
    holding the role (403) and reaching the project the path names (403 / 404). One
    function per role, so a route that also takes the caller as a parameter runs it once."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(request: Request, caller: Caller = Depends(current_caller)) -> Caller:
        if not caller.allows(role):
            raise _forbidden(
                f"this operation needs the {role!r} role; token {caller.name!r} has {caller.role!r}"
            )
        if caller.project_id is not None:  # only a scoped token's check can need a query
            await run_in_threadpool(check_scope, get_ctx(request), caller, request.path_params)
        return caller

    dependency.role = role  # type: ignore[attr-defined]
    return dependency


async def require_webhook_secret(
    request: Request,
    secret: str | None = Header(
        None,
        alias=SECRET_HEADER,
        description="the project's webhook secret (`labelloop webhooks register`)",
    ),
) -> None:
    state = request.scope.setdefault("state", {})
    project = request.path_params.get("project", "")
    await verify_request_secret(get_ctx(request), state, project, secret, SECRET_HEADER)


def access(kind: str) -> dict[str, Any]:
    """Route keyword arguments declaring who may call it: the check and its OpenAPI note."""
    if kind not in KINDS or kind == SESSION:  # a page depends on web.session.current_caller
        raise ValueError(f"unknown access kind {kind!r}: one of {', '.join(KINDS)}")
    extra = {"openapi_extra": {ROLE_KEY: kind}}
    if kind in ROLES:
        return {"dependencies": [Depends(require_role(kind))], **extra}
    if kind == WEBHOOK:
        return {"dependencies": [Depends(require_webhook_secret)], **extra}
    return extra


ACCESS_NOTE = {
    PUBLIC: "**Access:** public (no credentials).",
    SESSION: "**Access:** a dashboard log-in (any token; its project scope applies).",
    WEBHOOK: "**Access:** the project's webhook secret (its own, else LABELLOOP_WEBHOOK_SECRET).",
    **{r: f"**Role:** `{r}` or higher ({ROLE_HELP[r]})." for r in ROLES},
}


def route_access(route: APIRoute) -> str | None:
    return (route.openapi_extra or {}).get(ROLE_KEY)


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute of an app or router, those of included routers too."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)


REFUSALS = {
    "401": {"description": "no valid bearer token"},
    "403": {"description": "the token's role or project does not reach this operation"},
}


def describe_access(app: FastAPI) -> None:
    """The OpenAPI document states each operation's access: a line in its description
    and, for a role, the 401 / 403 answers among its responses."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                kind = op.get(ROLE_KEY) if isinstance(op, dict) else None
                if kind is None:
                    continue
                base = (op.get("description") or "").strip()
                op["description"] = f"{base}\n\n{ACCESS_NOTE[kind]}" if base else ACCESS_NOTE[kind]
                if kind in ROLES:
                    for code, answer in REFUSALS.items():
                        op.setdefault("responses", {}).setdefault(code, answer)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
