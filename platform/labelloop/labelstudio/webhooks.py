"""Label Studio webhooks: the payloads labelloop reads and the secret they carry.

Label Studio POSTs `{"action": ..., "project": {...}, ...}` for each event; with the
payload enabled the annotation events carry (Label Studio 1.23, `webhooks/models.py`):

  ANNOTATION_CREATED / ANNOTATION_UPDATED  "annotation": {id, task, project, result, ...}
  ANNOTATIONS_CREATED                      "annotation": [{...}, ...]   (bulk, a list)
  ANNOTATIONS_DELETED                      "annotations": [{"id": ...}, ...]

Label Studio sends our secret back in a header, which is how the API knows the call is
genuine. What an event starts (recording, the debounced retrain) and registering the
webhook for a project are `labelloop.pipelines.webhooks`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from labelloop.errors import InputError

SECRET_HEADER = "X-Labelloop-Webhook-Secret"
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


def secret_matches(configured: str, given: str | None) -> bool:
    """Constant-time comparison; an unset secret matches nothing."""
    return (
        bool(configured)
        and given is not None
        and hmac.compare_digest(configured.encode(), given.encode())
    )


def webhook_url(base_url: str, project: str) -> str:
    return f"{base_url.rstrip('/')}/webhooks/labelstudio/{project}"
