"""`GET /health`: for load balancers and the compose healthcheck (no token)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends, HTTPException, status
from sqlalchemy import text

from labelloop.api.auth import access, get_ctx
from labelloop.api.schemas import ErrorOut, HealthOut
from labelloop.context import Context

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": ErrorOut, "description": "the database does not answer"}},
    summary="Liveness and database check",
    **access("public"),
)
def health(ctx: Context = Depends(get_ctx)) -> HealthOut:
    """200 when the service answers and its database runs a query."""
    try:
        with ctx.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"database: {type(exc).__name__}"
        ) from None
    try:
        release = version("labelloop")
    except PackageNotFoundError:  # running from a source tree
        release = "unknown"
    return HealthOut(status="ok", database="ok", version=release)
