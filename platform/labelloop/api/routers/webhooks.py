"""`POST /webhooks/labelstudio/{project}`: Label Studio's annotation events."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Request, status

from labelloop.api.auth import access, get_ctx
from labelloop.api.schemas import ErrorOut, WebhookOut
from labelloop.context import Context
from labelloop.labelstudio.webhooks import SECRET_HEADER, parse_event
from labelloop.pipelines.dispatch import launch
from labelloop.pipelines.webhooks import record_event

router = APIRouter(tags=["webhooks"])


@router.post(
    "/webhooks/labelstudio/{project}",
    response_model=WebhookOut,
    status_code=status.HTTP_202_ACCEPTED,
    **access("webhook"),
    responses={
        401: {"model": ErrorOut, "description": f"missing or wrong {SECRET_HEADER}"},
        404: {"model": ErrorOut, "description": "no such project"},
        422: {"model": ErrorOut, "description": "not an annotation event labelloop can read"},
        503: {"model": ErrorOut, "description": "webhooks are not configured"},
    },
    summary="Receive a Label Studio webhook",
)
def labelstudio_webhook(
    project: str,
    request: Request,
    payload: dict = Body(..., description="Label Studio's webhook body, with its payload"),
    ctx: Context = Depends(get_ctx),
) -> WebhookOut:
    """Records ANNOTATION_CREATED, ANNOTATIONS_CREATED, ANNOTATION_UPDATED and
    ANNOTATIONS_DELETED events. When the project's pending annotations reach its
    `min_annotations`, a retrain is queued to start after `debounce_s` of quiet; the
    events of the same burst join it, so a burst starts one pipeline. Other actions are
    acknowledged and ignored. Register it with `labelloop webhooks register`."""
    event = parse_event(payload)
    if event is None:
        return WebhookOut(status="ignored")
    out = record_event(ctx, project, event)
    if out.request is not None:
        launch(ctx, request.app.state.dispatcher, out.request)
    return WebhookOut(
        status=out.status,
        event_id=out.event_id,
        pending_annotations=out.pending_annotations,
        threshold=out.threshold,
        pipeline_run_id=out.pipeline_run_id,
    )
