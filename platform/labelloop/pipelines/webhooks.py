"""Annotation events in, a debounced retrain out.

The events come from Label Studio's webhooks (`labelloop.labelstudio.webhooks` reads their
payloads and registers the webhook). Each event is stored (`webhook_event`). When a
project's pending events (those no pipeline has taken into account yet) reach
`min_annotations` annotations, a pipeline run is queued with a quiet time of
`debounce_s`: events of the same burst join that queued run (and push its start back, up
to `debounce_max_s` after it was queued), so a burst of fifty annotations starts one
pipeline. Events arriving while a pipeline runs stay pending; when it finishes,
`follow_up` queues the next one if they reached the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from labelloop.access import has_own_webhook_secret, new_secret, set_webhook_secret
from labelloop.context import Context
from labelloop.db.models import PipelineRun, Project, WebhookEvent, utcnow
from labelloop.errors import ConfigError, InputError
from labelloop.labelstudio.client import LabelStudioClient
from labelloop.labelstudio.webhooks import ACTIONS, SECRET_HEADER, AnnotationEvent, webhook_url
from labelloop.pipelines.runs import (
    PipelineParams,
    PipelineRequest,
    PipelineStatus,
    active_run,
    as_utc,
    lock_project,
    request_in_session,
    resolve_params,
)
from labelloop.pipelines.triggers import effective_triggers, labelstudio_links, link_labelstudio
from labelloop.projects import get_project


@dataclass
class EventOutcome:
    event_id: int
    status: str  # pending | joined | triggered | waiting | paused
    pending_annotations: int
    threshold: int
    pipeline_run_id: int | None = None
    request: PipelineRequest | None = None  # a new run to dispatch


def record_event(ctx: Context, project_name: str, event: AnnotationEvent) -> EventOutcome:
    """Store the event and decide, in the same transaction, whether it starts a retrain."""
    with ctx.db.session(serialized=True) as s:
        project = get_project(s, project_name)
        _check_linked(project, event)
        lock_project(s, project.id)
        trig = effective_triggers(project, ctx.settings)
        row = WebhookEvent(
            project_id=project.id,
            action=event.action,
            ls_project=event.ls_project,
            annotation_ids=event.annotation_ids,
            annotations=len(event.annotation_ids),
        )
        s.add(row)
        s.flush()
        out = EventOutcome(row.id, "pending", 0, trig.min_annotations)
        active = active_run(s, project.id)
        if active is not None and active.status == PipelineStatus.queued:
            # A queued run has not synced yet: it takes this event's annotation along.
            row.pipeline_run_id = active.id
            _push_back(active, trig.debounce_s, trig.debounce_max_s)
            out.status, out.pipeline_run_id = "joined", active.id
            return out
        out.pending_annotations = pending_annotations(s, project.id)
        if active is not None:
            out.status, out.pipeline_run_id = "waiting", active.id
            return out
        if not trig.active:
            out.status = "paused"
            return out
        if out.pending_annotations >= trig.min_annotations:
            out.request = _queue(s, ctx, project, trig.debounce_s)
            out.status, out.pipeline_run_id = "triggered", out.request.run_id
        return out


def pending_annotations(s, project_id: int) -> int:
    return (
        s.scalar(
            select(func.coalesce(func.sum(WebhookEvent.annotations), 0)).where(
                WebhookEvent.project_id == project_id, WebhookEvent.pipeline_run_id.is_(None)
            )
        )
        or 0
    )


def _queue(s, ctx: Context, project: Project, delay_s: float) -> PipelineRequest:
    params = resolve_params(project, ctx, PipelineParams())
    req = request_in_session(s, ctx, project, "webhook", "labelstudio", params, delay_s, None)
    if req.created:
        s.execute(
            WebhookEvent.__table__.update()
            .where(WebhookEvent.project_id == project.id, WebhookEvent.pipeline_run_id.is_(None))
            .values(pipeline_run_id=req.run_id)
        )
    return req


def _push_back(run: PipelineRun, debounce_s: float, max_s: float) -> None:
    """Debounce: the run starts `debounce_s` after the burst's last event, but no later
    than `max_s` after it was queued."""
    created = as_utc(run.created_at)
    latest = created + timedelta(seconds=max_s) if created else None
    wanted = utcnow() + timedelta(seconds=debounce_s)
    run.not_before = min(wanted, latest) if latest else wanted
    run.updated_at = utcnow()


def _check_linked(project: Project, event: AnnotationEvent) -> None:
    linked = {lk["ls_project"] for lk in labelstudio_links(project)}
    if not linked:
        raise InputError(
            f"project {project.name!r} has no linked Label Studio project; run "
            f"`labelloop webhooks register --project {project.name} --ls-project ID --url ...`"
        )
    if event.ls_project is not None and event.ls_project not in linked:
        raise InputError(
            f"Label Studio project {event.ls_project} is not linked to project "
            f"{project.name!r} (linked: {', '.join(str(i) for i in sorted(linked))})"
        )


def follow_up(ctx: Context, project_id: int) -> PipelineRequest | None:
    """After a pipeline ends: queue the next one when the events that arrived meanwhile
    reached the threshold (the caller dispatches it)."""
    with ctx.db.session(serialized=True) as s:
        lock_project(s, project_id)
        project = s.get(Project, project_id)
        trig = effective_triggers(project, ctx.settings)
        if not trig.active or active_run(s, project_id) is not None:
            return None
        if pending_annotations(s, project_id) < trig.min_annotations:
            return None
        return _queue(s, ctx, project, trig.debounce_s)


@dataclass(frozen=True)
class WiringSecret:
    """The secret Label Studio is given for a project: a new one of the project's own
    (`own`: its sha256 is stored once Label Studio holds it), or the shared one."""

    value: str
    own: bool


def wiring_secret(ctx: Context, project_name: str, own: bool | None) -> WiringSecret:
    """`own` True: a new secret of the project's own (a project's own secret cannot be
    read back, so wiring it again always makes a new one); False: the shared
    LABELLOOP_WEBHOOK_SECRET; None: whichever the project uses now."""
    if own is None:
        own = has_own_webhook_secret(ctx, project_name)
    if own:
        return WiringSecret(new_secret(), True)
    shared = ctx.settings.webhook_secret.get_secret_value()
    if not shared:
        raise ConfigError(
            "set LABELLOOP_WEBHOOK_SECRET first (Label Studio sends it back), or give the "
            "project its own secret (--project-secret)"
        )
    return WiringSecret(shared, False)


def keep_secret(ctx: Context, project_name: str, secret: WiringSecret) -> None:
    """Record which secret the project's Label Studio now holds (only its sha256)."""
    set_webhook_secret(ctx, project_name, secret.value if secret.own else None)


def _wiring(
    ctx: Context,
    project_name: str,
    base_url: str,
    ls_url: str | None,
    token: str | None,
    verb: str,
) -> tuple[str, str]:
    """The Label Studio URL and token for wiring a project to Label Studio, checked (with
    the project) before any request is made."""
    ls_url = (ls_url or ctx.settings.labelstudio_url).rstrip("/")
    token = token or ctx.settings.labelstudio_token.get_secret_value()
    if not ls_url or not token:
        raise ConfigError(
            f"{verb} needs LABELLOOP_LABELSTUDIO_URL and LABELLOOP_LABELSTUDIO_TOKEN (in "
            "Label Studio: your avatar -> Account & Settings -> Personal Access Token, or a "
            "legacy token where the organisation allows them)"
        )
    if not base_url.startswith(("http://", "https://")):
        raise InputError(
            f"--url must be the http(s) address of `labelloop serve`, got {base_url!r}"
        )
    with ctx.db.session() as s:
        get_project(s, project_name)  # a clear error before any request
    return ls_url, token


def register_webhook(
    ctx: Context,
    project_name: str,
    *,
    ls_project: int,
    base_url: str,
    ls_url: str | None = None,
    token: str | None = None,
    label_map: dict[str, str] | None = None,
    own_secret: bool | None = None,
    secret: WiringSecret | None = None,
) -> dict[str, Any]:
    """Create (or update) the project's webhook in Label Studio and link the Label Studio
    project as a source of `project_name`. Idempotent: the webhook is found by its URL.

    `own_secret` (see `wiring_secret`) chooses the secret Label Studio sends (`secret`:
    one the caller chose already); the project records it only once Label Studio holds
    it, so a failed call changes nothing."""
    chosen = secret or wiring_secret(ctx, project_name, own_secret)
    ls_url, token = _wiring(ctx, project_name, base_url, ls_url, token, "registering")
    url = webhook_url(base_url, project_name)
    hook_id, created = LabelStudioClient(ls_url, token).ensure_webhook(
        ls_project, url, actions=ACTIONS, headers={SECRET_HEADER: chosen.value}
    )
    keep_secret(ctx, project_name, chosen)
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
        "secret": "project" if chosen.own else "shared",
    }


ML_BACKEND_USER = "labelstudio"


def connect_labelstudio(
    ctx: Context,
    project_name: str,
    *,
    ls_project: int,
    base_url: str,
    ls_url: str | None = None,
    token: str | None = None,
    label_map: dict[str, str] | None = None,
    own_secret: bool | None = None,
) -> dict[str, Any]:
    """Connect a Label Studio project in one step: check URL and token (a clear error
    before anything changes), register labelloop as its ML backend (predictions of the
    production model on demand) and the annotation webhook, and link it as a source.
    Both carry the same secret (`own_secret`: see `wiring_secret`), recorded once the
    webhook holds it: Label Studio calls the backend's `/setup` with it while saving."""
    from labelloop.labelstudio.ml_backend import backend_url

    secret = wiring_secret(ctx, project_name, own_secret)
    ls_url, token = _wiring(ctx, project_name, base_url, ls_url, token, "connecting")
    client = LabelStudioClient(ls_url, token)
    user = client.whoami()  # a wrong URL or token fails here, before any change
    hook = register_webhook(
        ctx,
        project_name,
        ls_project=ls_project,
        base_url=base_url,
        ls_url=ls_url,
        token=token,
        label_map=label_map,
        secret=secret,
    )
    url = backend_url(base_url, project_name)
    backend_id, created = client.ensure_ml_backend(
        ls_project,
        url,
        title=f"labelloop {project_name}",
        user=ML_BACKEND_USER,
        password=secret.value,
    )
    return {
        "ls_url": ls_url,
        "ls_project": ls_project,
        "user": user,
        "ml_backend": {"id": backend_id, "created": created, "url": url},
        "webhook": {"id": hook["webhook_id"], "created": hook["created"], "url": hook["url"]},
        "secret": hook["secret"],
    }


def pending_events(ctx: Context, project_name: str) -> list[dict[str, Any]]:
    """Annotation events no pipeline run has taken into account yet, oldest first: what
    the next retrain will learn from (and why one has not started, below the threshold)."""
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        rows = s.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.project_id == project.id, WebhookEvent.pipeline_run_id.is_(None))
            .order_by(WebhookEvent.id)
        ).all()
        return [
            {
                "id": e.id,
                "action": e.action,
                "ls_project": e.ls_project,
                "annotations": e.annotations,
                "annotation_ids": list(e.annotation_ids or []),
                "received_at": e.received_at.isoformat(),
            }
            for e in rows
        ]
