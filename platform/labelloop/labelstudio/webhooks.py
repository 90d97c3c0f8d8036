"""Label Studio webhooks: the payloads labelloop reads and the secret they carry.

Label Studio POSTs `{"action": ..., "project": {...}, ...}` for each event; with the
payload enabled the annotation events carry (Label Studio 1.23, `webhooks/models.py`):

  ANNOTATION_CREATED / ANNOTATION_UPDATED  "annotation": {id, task, project, result, ...}
  ANNOTATIONS_CREATED                      "annotation": [{...}, ...]   (bulk, a list)
  ANNOTATIONS_DELETED                      "annotations": [{"id": ...}, ...]

Label Studio sends our secret back in a header (the ML backend routes: as the basic-auth
password), which is how the API knows the call is genuine: the project's own secret, else
the shared LABELLOOP_WEBHOOK_SECRET (labelloop.access). What an event starts (recording,
the debounced retrain) and registering the webhook for a project are
`labelloop.pipelines.webhooks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, status
from fastapi.concurrency import run_in_threadpool

from labelloop.access import check_webhook_secret, webhook_secret_let_in
from labelloop.context import Context
from labelloop.errors import InputError

SECRET_HEADER = "X-Labelloop-Webhook-Secret"
BASIC = "basic auth"  # how the ML backend routes carry the secret
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


@dataclass(frozen=True)
class AnnotationEvent:
    """Annotations created, updated or deleted in a Label Studio project."""

    action: str
    ls_project: int | None
    annotation_ids: list[int]


def parse_event(payload: Any) -> AnnotationEvent | None:
    """An annotation event from a webhook body; None for actions labelloop does not track.

    InputError names what is missing for a tracked action (for instance a webhook that
    was registered without its payload)."""
    if not isinstance(payload, dict):
        raise InputError("webhook body must be a JSON object")
    action = payload.get("action")
    if not isinstance(action, str) or not action:
        raise InputError("webhook body has no 'action'")
    if action not in ACTIONS:
        return None
    key = "annotations" if action == "ANNOTATIONS_DELETED" else "annotation"
    items = payload.get(key)
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise InputError(
            f"{action} webhook has no {key!r} (register the webhook with its payload: "
            "`labelloop webhooks register`)"
        )
    ids = []
    for i, item in enumerate(items):
        ann_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(ann_id, int):
            raise InputError(f"{action} webhook: {key}[{i}] has no integer 'id'")
        ids.append(ann_id)
    project = payload.get("project")
    ls_project = project.get("id") if isinstance(project, dict) else None
    if ls_project is None and isinstance(items[0], dict):
        ls_project = items[0].get("project")
    if ls_project is not None and not isinstance(ls_project, int):
        raise InputError(f"{action} webhook: project id {ls_project!r} is not an integer")
    return AnnotationEvent(action, ls_project, ids)


def check_secret(ctx: Context, project: str, given: str | None, carrier: str) -> None:
    """The webhook and ML backend routes' check of the secret Label Studio sends for
    `project`: 503 when the project has no secret of its own and no shared one is set,
    401 for a missing or wrong one (`carrier` names where it was expected)."""
    found = check_webhook_secret(ctx, project, given)
    if found == "off":
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "webhooks are off: LABELLOOP_WEBHOOK_SECRET is unset and the project has no "
            "secret of its own",
        )
    if found == "wrong":
        headers = {"WWW-Authenticate": "Basic"} if carrier == BASIC else None
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"missing or wrong {carrier}", headers)


# Where a request keeps what its credentials were found to be (its ASGI scope's "state"),
# so the check made before the body is read (api.limits) is not made again by the route:
# each is a query, and at a hundred webhooks a second the repeats saturate the pool.
CHECKED_PROJECT = "labelloop_secret_project"


def check_request_secret(
    ctx: Context, state: dict, project: str, given: str | None, carrier: str
) -> None:
    """`check_secret` (it may query), remembered in `state`, the request's scope state."""
    check_secret(ctx, project, given, carrier)
    state[CHECKED_PROJECT] = project


async def verify_request_secret(
    ctx: Context, state: dict, project: str, given: str | None, carrier: str
) -> None:
    """What the webhook and ML backend routes depend on: settled without a thread when it
    can be (`secret_settled`), else checked in a worker thread."""
    if not secret_settled(ctx, state, project, given):
        await run_in_threadpool(check_request_secret, ctx, state, project, given, carrier)


def secret_settled(ctx: Context, state: dict, project: str, given: str | None) -> bool:
    """True when the request's secret for `project` is known good without a query (checked
    already, or it let a request in a moment ago: `access.webhook_secret_let_in`), so an
    async caller need not take a worker thread for it."""
    if state.get(CHECKED_PROJECT) == project:
        return True
    if webhook_secret_let_in(ctx, project, given):
        state[CHECKED_PROJECT] = project
        return True
    return False


def webhook_url(base_url: str, project: str) -> str:
    return f"{base_url.rstrip('/')}/webhooks/labelstudio/{project}"
