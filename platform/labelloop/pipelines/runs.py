"""Pipeline runs: one request to run the loop for a project, and its life in the database.

A trigger (beat, a webhook, the API, the CLI) calls `request_pipeline`, which either
queues a new run or records the trigger as `coalesced` into the run already queued or
running: at most one pipeline per project at a time, decided by a unique key in the
database (`pipeline_run.active_project_id`), so it holds for twenty triggers arriving
at once on different hosts. The workers then move the run through its stages (`begin`,
`advance`, `finish`); its status, stage and the ids it produced are always in the row,
which is what the API and `labelloop runs` show.

Concurrent requests for one project are also serialised by a transaction-scoped
advisory lock on PostgreSQL (SQLite serialises writers anyway), so the losing trigger
sees the winner's row instead of hitting the unique key; the key stays as the guarantee.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop.context import Context
from labelloop.db.models import PipelineRun, Project, TrainingRun, WebhookEvent, utcnow
from labelloop.domain import RunStatus
from labelloop.errors import ConfigError, ConflictError, InputError, NotFoundError
from labelloop.kinds import kind_entry
from labelloop.pipelines.triggers import PUSH_TARGETS, effective_triggers
from labelloop.projects import get_project

ADVISORY_CLASS = 0x6C6C  # "ll": the namespace of labelloop's advisory locks


class PipelineStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    stopped = "stopped"  # nothing new to learn from
    failed = "failed"
    cancelled = "cancelled"
    coalesced = "coalesced"  # another run of the project was already queued or running


ACTIVE = (PipelineStatus.queued.value, PipelineStatus.running.value)
TRIGGERS = ("api", "cli", "beat", "webhook")


class PipelineParams(BaseModel):
    """What a pipeline run does besides its defaults; unset fields come from the project's
    trigger settings (labelloop.pipelines.triggers) and then from the global Settings."""

    model_config = ConfigDict(extra="forbid")

    budget: int | None = Field(None, ge=1, description="images to select (default: project's)")
    push_to: str | None = Field(None, description=" | ".join(PUSH_TARGETS))
    strategy: str | None = Field(
        None, description="selection strategy (default: the project kind's, labelloop.kinds)"
    )
    recipe: dict[str, Any] = Field(
        default_factory=dict, description="recipe overrides, e.g. {'epochs': 10}"
    )
    sync: bool = Field(True, description="pull the project's linked Label Studio projects first")
    round_model: Literal["production", "candidate"] = Field(
        "production",
        description="the model that scores and pre-annotates the round: production, or the "
        "newly trained candidate even when it lost the promotion gate",
    )


class RunParams(BaseModel):
    """A run's parameters, resolved once when it is requested (the request's, else the
    project's, else the global defaults), stored with the run and read by every stage."""

    budget: int = Field(ge=1)
    push_to: str
    strategy: str
    recipe: dict[str, Any] = Field(default_factory=dict)
    # A trigger that asks for a recipe wants it trained even on unchanged data.
    recipe_requested: bool = False
    sync: bool = True
    round_model: str = "production"


@dataclass
class PipelineRequest:
    run_id: int
    created: bool  # a new run was queued: the caller dispatches it
    coalesced_into: int | None = None
    task_id: str | None = None
    countdown: float = 0.0
    duplicate: bool = False  # the same beat slot was already requested


def lock_project(s: Session, project_id: int) -> None:
    """Serialise pipeline decisions for one project until the transaction ends."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(
            text("SELECT pg_advisory_xact_lock(:c, :p)"), {"c": ADVISORY_CLASS, "p": project_id}
        )


def active_run(s: Session, project_id: int) -> PipelineRun | None:
    return s.scalar(select(PipelineRun).where(PipelineRun.active_project_id == project_id))


def resolve_params(project: Project, ctx: Context, params: PipelineParams) -> RunParams:
    """The run's parameters: the request's, else the project's, else the defaults;
    InputError names what is invalid."""
    from labelloop.runs import default_recipe
    from labelloop.selection import get_strategy

    trig = effective_triggers(project, ctx.settings)
    push_to = params.push_to or trig.push_to
    if push_to not in PUSH_TARGETS:
        raise InputError(f"push_to must be one of {', '.join(PUSH_TARGETS)}, got {push_to!r}")
    strategy = params.strategy or kind_entry(project.task).default_strategy
    get_strategy(strategy)  # NotFound/Input error listing the strategies
    recipe = {**trig.recipe, **params.recipe}
    try:
        default_recipe(project.task).with_overrides(recipe)
    except ValidationError as exc:
        raise InputError(f"invalid recipe override {recipe}: {_first_error(exc)}") from None
    except ConfigError as exc:
        raise InputError(f"invalid recipe override {recipe}: {exc}") from None
    return RunParams(
        budget=params.budget or trig.budget,
        push_to=push_to,
        strategy=strategy,
        recipe=recipe,
        recipe_requested=bool(params.recipe),
        sync=params.sync,
        round_model=params.round_model,
    )


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"


def request_pipeline(
    ctx: Context,
    project_name: str,
    *,
    trigger: str,
    requested_by: str | None = None,
    params: PipelineParams | None = None,
    delay_s: float = 0.0,
    scheduled_for: datetime | None = None,
) -> PipelineRequest:
    """Queue a pipeline run for the project, or coalesce into the one already active."""
    if trigger not in TRIGGERS:
        raise InputError(f"unknown trigger {trigger!r}; one of {', '.join(TRIGGERS)}")
    with ctx.db.session() as s:  # resolve first: never while holding the project's lock
        resolved = resolve_params(get_project(s, project_name), ctx, params or PipelineParams())
    for _ in range(3):
        try:
            with ctx.db.session(serialized=True) as s:
                project = get_project(s, project_name)
                lock_project(s, project.id)
                return request_in_session(
                    s, ctx, project, trigger, requested_by, resolved, delay_s, scheduled_for
                )
        except IntegrityError:
            continue  # a concurrent trigger took the active slot (or the beat slot) first
    raise ConflictError(f"could not queue a pipeline for {project_name!r}: too much contention")


def request_in_session(
    s: Session,
    ctx: Context,
    project: Project,
    trigger: str,
    requested_by: str | None,
    params: RunParams,
    delay_s: float,
    scheduled_for: datetime | None,
) -> PipelineRequest:
    """`request_pipeline` inside a transaction that already holds `lock_project`, with
    the parameters already resolved."""
    now = utcnow()
    if scheduled_for is not None:
        seen = s.scalar(
            select(PipelineRun).where(
                PipelineRun.project_id == project.id, PipelineRun.scheduled_for == scheduled_for
            )
        )
        if seen is not None:
            return PipelineRequest(seen.id, False, seen.coalesced_into_id, duplicate=True)
    active = active_run(s, project.id)
    if active is not None and _stale(active, ctx, now):
        active.status = PipelineStatus.failed.value
        active.message = _abandoned(active)
        active.finished_at = now
        active.active_project_id = None
        s.flush()
        active = None
    if active is not None:
        row = PipelineRun(
            project_id=project.id,
            trigger=trigger,
            requested_by=requested_by,
            status=PipelineStatus.coalesced.value,
            coalesced_into_id=active.id,
            params=params.model_dump(),
            message=f"coalesced into pipeline run {active.id} ({active.status})",
            scheduled_for=scheduled_for,
            finished_at=now,
        )
        s.add(row)
        s.flush()
        return PipelineRequest(row.id, False, active.id)
    row = PipelineRun(
        project_id=project.id,
        active_project_id=project.id,
        trigger=trigger,
        requested_by=requested_by,
        status=PipelineStatus.queued.value,
        params=params.model_dump(),
        task_id=str(uuid.uuid4()),
        scheduled_for=scheduled_for,
        not_before=now + timedelta(seconds=delay_s) if delay_s > 0 else None,
    )
    s.add(row)
    s.flush()
    return PipelineRequest(row.id, True, None, row.task_id, max(delay_s, 0.0))


def _abandoned(run: PipelineRun) -> str:
    return (
        f"abandoned: no sign of life since {as_utc(run.updated_at).isoformat(timespec='seconds')}"
    )


def _stale(run: PipelineRun, ctx: Context, now: datetime) -> bool:
    seen = as_utc(run.updated_at)
    return seen is not None and now - seen > timedelta(seconds=ctx.settings.pipeline_stale_s)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    from datetime import UTC

    return value.replace(tzinfo=UTC)


# -- lifecycle, driven by the workers --------------------------------------------------


@dataclass
class Begin:
    """What `begin` decided: run (with the project and params), wait, or skip."""

    project: str = ""
    params: RunParams | None = None
    wait_s: float = 0.0
    skip: str | None = None  # why the task does nothing (cancelled, already finished)
    events: int = 0


def begin(ctx: Context, run_id: int, task_id: str | None) -> Begin:
    """Start a queued run: it claims the project's pending webhook events (the sync that
    follows includes their annotations). A debounced run that is still inside its quiet
    time returns `wait_s` instead."""
    with ctx.db.session(serialized=True) as s:
        run = _get(s, run_id)
        lock_project(s, run.project_id)
        s.refresh(run)
        project = s.get(Project, run.project_id)
        if run.status not in ACTIVE:
            return Begin(skip=f"pipeline run {run_id} is {run.status}")
        # Only the task the run expects may begin it: a retry or redelivery keeps its id;
        # an older copy (superseded by a debounce wake-up, or by the stages that followed)
        # skips itself.
        if run.task_id is not None and run.task_id != task_id:
            return Begin(skip=f"pipeline run {run_id} belongs to task {run.task_id} now")
        not_before = as_utc(run.not_before)
        now = utcnow()
        if not_before is not None and not_before > now:
            run.task_id, run.updated_at = None, now
            return Begin(project.name, wait_s=(not_before - now).total_seconds())
        run.status = PipelineStatus.running.value
        run.stage = "sync"
        run.task_id = task_id
        run.started_at = run.started_at or now
        run.updated_at = now
        claimed = s.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.project_id == run.project_id, WebhookEvent.pipeline_run_id.is_(None)
            )
            .values(pipeline_run_id=run_id)
        ).rowcount
        return Begin(project.name, RunParams.model_validate(run.params), events=claimed or 0)


def set_task(ctx: Context, run_id: int, task_id: str) -> None:
    """Record the task that will run a waiting (debounced) run."""
    with ctx.db.session(serialized=True) as s:
        _get(s, run_id).task_id = task_id


def advance(
    ctx: Context,
    run_id: int,
    stage: str,
    *,
    state: dict[str, Any] | None = None,
    task_id: str | None = None,
    training_run_id: int | None = None,
) -> bool:
    """Record that the run reached `stage`; False when it is no longer running (cancelled,
    failed, or finished by a duplicate delivery), and the caller stops."""
    with ctx.db.session(serialized=True) as s:
        run = _get(s, run_id)
        if run.status != PipelineStatus.running:
            return False
        run.stage = stage
        run.updated_at = utcnow()
        if state is not None:
            run.state = _ids(state)
        if task_id is not None:
            run.task_id = task_id
        if training_run_id is not None:
            run.training_run_id = training_run_id
        return True


def heartbeat(ctx: Context, run_id: int) -> None:
    """A sign of life during a long stage (training): keeps the run from looking stale."""
    with ctx.db.session() as s:
        s.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.status == PipelineStatus.running)
            .values(updated_at=utcnow())
        )


def finish(
    ctx: Context,
    run_id: int,
    status: PipelineStatus,
    *,
    message: str | None = None,
    state: dict[str, Any] | None = None,
) -> bool:
    """End an active run (idempotent: an already finished run is left as it is)."""
    with ctx.db.session(serialized=True) as s:
        run = _get(s, run_id)
        if run.status not in ACTIVE:
            return False
        now = utcnow()
        run.status = status.value
        run.finished_at = now
        run.updated_at = now
        run.active_project_id = None
        if message is not None:
            run.message = message[:4000]
        if state is not None:
            run.state = _ids(state)
        return True


def _ids(state: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of a task state (ids, counts, reasons)."""
    return {k: v for k, v in state.items() if isinstance(v, int | float | str | bool | None | dict)}


@dataclass
class CancelResult:
    run_id: int
    task_id: str | None
    training_run_id: int | None
    was: str


def cancel(ctx: Context, run_id: int, reason: str = "cancelled") -> CancelResult:
    """Mark an active run cancelled, and its training run with it: the trainer stops at its
    next progress report, queued tasks skip themselves. The caller revokes `task_id`."""
    with ctx.db.session(serialized=True) as s:
        run = _get(s, run_id)
        if run.status not in ACTIVE:
            raise ConflictError(f"pipeline run {run_id} is already {run.status}")
        was = run.status
        now = utcnow()
        run.status = PipelineStatus.cancelled.value
        run.message = reason[:4000]
        run.finished_at = now
        run.updated_at = now
        run.active_project_id = None
        if run.training_run_id is not None:
            tr = s.get(TrainingRun, run.training_run_id)
            if tr is not None and tr.status in (RunStatus.queued, RunStatus.running):
                tr.status = RunStatus.cancelled.value
                tr.error = reason[:4000]
        return CancelResult(run_id, run.task_id, run.training_run_id, was)


def abandon_stale(ctx: Context) -> list[int]:
    """End active runs without any sign of life for `pipeline_stale_s` (their messages
    were lost, e.g. a Redis without persistence restarted); returns their ids."""
    cutoff = utcnow() - timedelta(seconds=ctx.settings.pipeline_stale_s)
    ended = []
    with ctx.db.session(serialized=True) as s:
        for run in s.scalars(
            select(PipelineRun).where(
                PipelineRun.active_project_id.is_not(None), PipelineRun.updated_at < cutoff
            )
        ):
            run.status = PipelineStatus.failed.value
            run.message = _abandoned(run)
            run.finished_at = utcnow()
            run.active_project_id = None
            ended.append(run.id)
    return ended


def unsent_runs(ctx: Context) -> list[tuple[int, str]]:
    """Queued runs whose first task never started, `pipeline_unsent_s` after they were due
    (the process that queued them died before sending, or the message was lost): each gets
    a new task id to be sent again. An older copy that turns up later finds the run
    belongs to the new id and skips itself, so exactly one begins it."""
    cutoff = utcnow() - timedelta(seconds=ctx.settings.pipeline_unsent_s)
    out = []
    with ctx.db.session(serialized=True) as s:
        for run in s.scalars(
            select(PipelineRun).where(
                PipelineRun.status == PipelineStatus.queued.value,
                PipelineRun.active_project_id.is_not(None),
                PipelineRun.started_at.is_(None),
                PipelineRun.updated_at < cutoff,
                or_(PipelineRun.not_before.is_(None), PipelineRun.not_before < cutoff),
            )
        ):
            run.task_id, run.updated_at = str(uuid.uuid4()), utcnow()
            out.append((run.id, run.task_id))
    return out


def is_running(ctx: Context, run_id: int) -> bool:
    with ctx.db.session() as s:
        return _get(s, run_id).status == PipelineStatus.running


def _get(s: Session, run_id: int) -> PipelineRun:
    run = s.get(PipelineRun, run_id)
    if run is None:
        raise NotFoundError(f"no pipeline run with id {run_id}")
    return run


# -- reading -----------------------------------------------------------------------------


def run_info(ctx: Context, run_id: int) -> dict[str, Any]:
    with ctx.db.session() as s:
        run = _get(s, run_id)
        return _describe(s, run, s.get(Project, run.project_id).name)


def list_runs(
    ctx: Context, project_name: str, *, limit: int = 50, status: str | None = None
) -> list[dict[str, Any]]:
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        q = select(PipelineRun).where(PipelineRun.project_id == project.id)
        if status:
            q = q.where(PipelineRun.status == status)
        rows = s.scalars(q.order_by(PipelineRun.id.desc()).limit(limit))
        return [_describe(s, r, project.name) for r in rows]


def count_runs(ctx: Context, project_name: str) -> dict[str, int]:
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        return dict(
            s.execute(
                select(PipelineRun.status, func.count())
                .where(PipelineRun.project_id == project.id)
                .group_by(PipelineRun.status)
            ).all()
        )


def _describe(s: Session, run: PipelineRun, project: str) -> dict[str, Any]:
    training = None
    if run.training_run_id is not None:
        tr = s.get(TrainingRun, run.training_run_id)
        training = {
            "id": tr.id,
            "status": tr.status,
            "attempts": tr.attempts,
            "worker": tr.worker,
            "progress": tr.progress or {},
            "checkpoint_epoch": tr.checkpoint_epoch,
            "error": tr.error,
            "duration_s": tr.duration_s,
        }
    events = s.scalar(
        select(func.count(WebhookEvent.id)).where(WebhookEvent.pipeline_run_id == run.id)
    )
    return {
        "id": run.id,
        "project": project,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "status": run.status,
        "stage": run.stage,
        "coalesced_into": run.coalesced_into_id,
        "params": run.params,
        "state": run.state,
        "message": run.message,
        "task_id": run.task_id,
        "webhook_events": events or 0,
        "dataset_version_id": (run.state or {}).get("dataset_version_id"),
        "model_version_id": (run.state or {}).get("model_version_id"),
        "round_model": _round_model(run.state or {}),
        "round_progress": _round_progress(s, run.state or {}),
        "training": training,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "scheduled_for": _iso(run.scheduled_for),
        "not_before": _iso(run.not_before),
    }


def _round_progress(s: Session, state: dict[str, Any]) -> dict[str, int] | None:
    """Annotators' progress on the round the run pushed."""
    from labelloop.reports import round_progress

    return round_progress(s, state["round_id"]) if state.get("round_id") else None


def _round_model(state: dict[str, Any]) -> dict[str, Any] | None:
    """Which model scored and pre-annotated the run's round, and why."""
    if state.get("round_model_version_id") is None:
        return None
    return {
        "id": state["round_model_version_id"],
        "name": state.get("round_model"),
        "reason": state.get("round_model_reason"),
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None
