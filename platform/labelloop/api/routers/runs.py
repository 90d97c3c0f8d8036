"""Retrains: trigger one, watch its progress, cancel it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response, status

from labelloop.access import Caller
from labelloop.api.auth import access, get_ctx, require_role
from labelloop.api.schemas import CancelIn, ErrorOut, RunId, RunOut, TriggerIn, TriggerOut
from labelloop.context import Context
from labelloop.pipelines import runs as pipelines
from labelloop.pipelines.dispatch import launch

router = APIRouter(tags=["runs"])
ERRORS = {
    404: {"model": ErrorOut, "description": "no such project or run"},
    422: {"description": "invalid parameters (e.g. a recipe field that does not exist)"},
}


@router.post(
    "/projects/{project}/runs",
    response_model=TriggerOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": TriggerOut, "description": "coalesced into the run already active"},
        503: {"model": ErrorOut, "description": "the broker did not accept the run"},
        **ERRORS,
    },
    summary="Trigger a retrain",
    **access("trigger"),
)
def trigger_run(
    project: str,
    response: Response,
    request: Request,
    body: TriggerIn | None = None,
    ctx: Context = Depends(get_ctx),
    caller: Caller = Depends(require_role("trigger")),
) -> TriggerOut:
    """Queue the project's pipeline: sync its Label Studio projects, freeze, train (with
    the recipe overrides given), evaluate and promote, score, select and push. It stops
    early when there is nothing new to learn from.

    One pipeline per project at a time: while one is queued or running, the request is
    recorded as `coalesced` into it (HTTP 200) instead of starting a second one."""
    req = pipelines.request_pipeline(
        ctx, project, trigger="api", requested_by=caller.name, params=body or TriggerIn()
    )
    launch(ctx, request.app.state.dispatcher, req)
    if not req.created:
        response.status_code = status.HTTP_200_OK
    return TriggerOut(run=pipelines.run_info(ctx, req.run_id), coalesced=not req.created)


@router.get(
    "/projects/{project}/runs",
    response_model=list[RunOut],
    responses=ERRORS,
    summary="A project's pipeline runs",
    **access("read"),
)
def list_project_runs(
    project: str,
    limit: int = Query(50, ge=1, le=1000),
    status_: str | None = Query(None, alias="status", description="only runs in this status"),
    ctx: Context = Depends(get_ctx),
) -> list[dict]:
    """Newest first, with each run's stage and its training progress."""
    return pipelines.list_runs(ctx, project, limit=limit, status=status_)


@router.get(
    "/runs/{run_id}",
    response_model=RunOut,
    responses=ERRORS,
    summary="A run's status and progress",
    **access("read"),
)
def get_run(run_id: RunId, ctx: Context = Depends(get_ctx)) -> dict:
    """Status, stage, the ids produced so far, and the training's progress as the trainer
    last wrote it to the database (epoch, step, loss, validation metrics)."""
    return pipelines.run_info(ctx, run_id)


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunOut,
    responses={409: {"model": ErrorOut, "description": "the run already ended"}, **ERRORS},
    summary="Cancel a run",
    **access("trigger"),
)
def cancel_run(
    run_id: RunId, request: Request, body: CancelIn | None = None, ctx: Context = Depends(get_ctx)
) -> dict:
    """Mark the run (and its training) cancelled and revoke its queued task. A training in
    progress stops at its next progress report and keeps its last checkpoint."""
    result = pipelines.cancel(ctx, run_id, (body or CancelIn()).reason)
    if result.task_id:
        request.app.state.dispatcher.revoke(result.task_id)
    return pipelines.run_info(ctx, run_id)
