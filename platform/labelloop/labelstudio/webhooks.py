"""Label Studio webhooks: the payloads labelloop reads, and registering the webhook.

Label Studio POSTs `{"action": ..., "project": {...}, ...}` for each event; with the
payload enabled the annotation events carry (Label Studio 1.23, `webhooks/models.py`):

  ANNOTATION_CREATED / ANNOTATION_UPDATED  "annotation": {id, task, project, result, ...}
  ANNOTATIONS_CREATED                      "annotation": [{...}, ...]   (bulk, a list)
  ANNOTATIONS_DELETED                      "annotations": [{"id": ...}, ...]

Label Studio sends our secret back in a header, which is how the API knows the call is
genuine. What an event starts (recording, the debounced retrain) is
`labelloop.pipelines.webhooks`.
"""

from __future__ import annotations

import hmac
from typing import Any

from labelloop.context import Context
from labelloop.errors import ConfigError, InputError
from labelloop.pipelines.triggers import link_labelstudio
from labelloop.pipelines.webhooks import AnnotationEvent
from labelloop.projects import get_project

SECRET_HEADER = "X-Labelloop-Webhook-Secret"
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


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


def register_webhook(
    ctx: Context,
    project_name: str,
    *,
    ls_project: int,
    base_url: str,
    ls_url: str | None = None,
    token: str | None = None,
    label_map: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create (or update) the project's webhook in Label Studio and link the Label Studio
    project as a source of `project_name`. Idempotent: the webhook is found by its URL."""
    from labelloop.labelstudio.client import LabelStudioClient

    secret = ctx.settings.webhook_secret.get_secret_value()
    if not secret:
        raise ConfigError("set LABELLOOP_WEBHOOK_SECRET first: Label Studio sends it back")
    ls_url = (ls_url or ctx.settings.labelstudio_url).rstrip("/")
    token = token or ctx.settings.labelstudio_token.get_secret_value()
    if not ls_url or not token:
        raise ConfigError("registering needs LABELLOOP_LABELSTUDIO_URL and _TOKEN")
    if not base_url.startswith(("http://", "https://")):
        raise InputError(
            f"--url must be the http(s) address of `labelloop serve`, got {base_url!r}"
        )
    with ctx.db.session() as s:
        get_project(s, project_name)  # a clear error before any request
    url = webhook_url(base_url, project_name)
    hook_id, created = LabelStudioClient(ls_url, token).ensure_webhook(
        ls_project, url, actions=ACTIONS, headers={SECRET_HEADER: secret}
    )
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        link = link_labelstudio(
            project, ls_url, ls_project, label_map=label_map, webhook_id=hook_id
        )
    return {
        "webhook_id": hook_id,
        "created": created,
        "url": url,
        "ls_url": ls_url,
        "ls_project": ls_project,
        "actions": list(ACTIONS),
        "link": link,
    }
