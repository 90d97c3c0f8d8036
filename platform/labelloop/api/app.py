"""The FastAPI application: `create_app(settings)` builds it (uvicorn calls it as a factory).

Endpoints call the same stage and pipeline functions as the CLI and the workers, and hand
runs to the workers through the dispatcher (labelloop.pipelines.dispatch), never doing the work in
the request. Errors of the project's own types become JSON `{"detail": ...}` with a
matching status: not found 404, bad input 422 (also a value the database cannot store,
such as a NUL byte), conflicting state 409, a failing service (broker, Label Studio) 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from labelloop.access import env_tokens
from labelloop.api.auth import describe_access
from labelloop.api.limits import CredentialsBeforeBody
from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.db import migrate
from labelloop.errors import (
    ConfigError,
    ConflictError,
    ExternalServiceError,
    InputError,
    LabelloopError,
    NotFoundError,
)
from labelloop.locks import LockBusy
from labelloop.pipelines.dispatch import Dispatcher, get_dispatcher, launch
from labelloop.pipelines.runs import request_pipeline

_log = logging.getLogger(__name__)

STATUS = (
    (NotFoundError, 404),
    (InputError, 422),
    (ConflictError, 409),
    (LockBusy, 409),
    (ExternalServiceError, 503),
    (ConfigError, 500),
)

DESCRIPTION = """\
For ML engineers: trigger a retrain of a project's model (optionally with recipe
overrides), watch its progress (epoch, step, loss), cancel it, compare model versions by
their metrics, download an artifact, promote a version. Label Studio posts annotation
events to `/webhooks/labelstudio/{project}`.

Authenticate with `Authorization: Bearer <token>`: a token of `labelloop tokens create`
(a role, optionally one project) or of `LABELLOOP_API_TOKENS` (admin over all projects).
Roles, each allowing what the ones before it allow: `read` (every GET, artifact downloads
included), `trigger` (start and cancel runs), `admin` (promote). Each operation states the
role it needs (`x-labelloop-role`); a valid token short of it gets 403, as does a token
limited to another project (an object of another project addressed by its id: 404).
A request with a body is refused (401) before its body is read unless it carries valid
credentials, and a body over `LABELLOOP_API_MAX_BODY_BYTES` gets 413.
"""

TAGS = [
    {"name": "runs", "description": "Pipeline runs: sync -> freeze -> train -> score -> push."},
    {"name": "projects", "description": "Projects, dataset versions, model versions, rounds."},
    {"name": "model versions", "description": "Artifacts and promotion."},
    {
        "name": "webhooks",
        "description": "Label Studio annotation events (the project's webhook secret).",
    },
    {"name": "health", "description": "Liveness, for load balancers (no token)."},
    {
        "name": "ml backend",
        "description": "Label Studio's ML backend protocol under /ml/{project} (basic auth, "
        "password: the project's webhook secret): predictions of the production model on "
        "demand.",
    },
]


def check_schema(settings: Settings) -> None:
    """Embedded SQLite is migrated on first use; a server database must be migrated by the
    deployment (`labelloop db upgrade`, the compose `prestart`)."""
    url = settings.database_url
    if migrate.current_revision(url) == migrate.head_revision(url):
        return
    if url.startswith("sqlite"):
        migrate.upgrade(url)
        return
    raise ConfigError("the database schema is not up to date; run `labelloop db upgrade`")


def warm_up() -> None:
    """Import and validate what the first trigger would otherwise load while it holds its
    project's lock (recipe validation imports timm: a second or more)."""
    from labelloop.domain import TaskKind
    from labelloop.runs import default_recipe

    for task in TaskKind:  # with_overrides validates every field, defaults included
        default_recipe(task.value).with_overrides({})


def create_app(
    settings: Settings | None = None, *, dispatcher: Dispatcher | None = None
) -> FastAPI:
    settings = settings or Settings()
    check_schema(settings)
    warm_up()
    ctx = Context(settings)
    set_context(ctx)  # an embedded worker in this process uses the same context
    dispatcher = dispatcher or get_dispatcher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with dispatcher.serving():
            yield
        ctx.close()

    app = FastAPI(
        title="labelloop",
        description=DESCRIPTION,
        version="1",
        openapi_tags=TAGS,
        lifespan=lifespan,
        max_body_size=settings.api_max_body_bytes,
    )
    app.state.ctx = ctx
    app.state.dispatcher = dispatcher
    app.state.tokens = env_tokens(settings)  # the database's are looked up per request
    app.add_middleware(CredentialsBeforeBody, ctx=ctx, tokens=lambda: app.state.tokens)

    @app.exception_handler(LabelloopError)
    async def _labelloop_error(request: Request, exc: LabelloopError) -> JSONResponse:
        code = next((c for kind, c in STATUS if isinstance(exc, kind)), 400)
        if code >= 500:
            _log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
        """A value the database cannot hold (a NUL byte in a string, a number out of its
        column's range) came from the client: its mistake, not the server's."""
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
        return JSONResponse({"detail": f"a value cannot be stored: {reason}"}, status_code=422)

    def ml_train(project: str) -> dict:
        """Label Studio's "Start training": a pipeline run, like the annotation webhook."""
        req = request_pipeline(ctx, project, trigger="webhook", requested_by="labelstudio")
        launch(ctx, dispatcher, req)
        return {"pipeline_run_id": req.run_id, "coalesced_into": req.coalesced_into}

    app.state.ml_train = ml_train

    from labelloop.api.routers import health, models, projects, runs, webhooks
    from labelloop.labelstudio import ml_backend

    for module in (runs, projects, models, webhooks, health, ml_backend):
        app.include_router(module.router)
    describe_access(app)
    return app
