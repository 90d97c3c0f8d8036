"""Thin tasks: ids in, call the stage, ids out.

Each stage task takes and returns a small `state` dict of ids (project name, dataset
version, model version, round), so a Celery chain passes each stage's committed ids to
the next and a task can be retried or redelivered with exactly the same input. All logic
lives in the stage functions of `labelloop`; the same code runs in the embedded demo.
`shared_task` binds them to whichever app is current: the production app of
`labelloop_workers.app` or the demo's embedded one.

A state carrying `pipeline_run_id` belongs to a pipeline run (labelloop.pipelines.runs): each
task first records its stage there and skips itself (dropping the rest of the chain)
when the run was cancelled or already ended, and a task that fails for good marks the
run failed with its error. Transient errors (Label Studio, storage, the database
connection) are retried with exponential backoff before that.
"""

from __future__ import annotations

import logging
import time
import uuid

from celery import Task, chord, shared_task
from celery.exceptions import Ignore
from sqlalchemy import select as sql_select

from labelloop.config import get_settings
from labelloop.context import Context, get_context
from labelloop.datasets.freeze import freeze as freeze_stage
from labelloop.db.models import ModelVersion, Project
from labelloop.errors import Cancelled, InputError
from labelloop.ingest import ingest_path
from labelloop.pipelines import runs as pipelines
from labelloop.pipelines.runs import PipelineStatus
from labelloop.push.stage import push_round
from labelloop.runs import execute_run, request_run, trained_version
from labelloop.scoring.stage import embedding_plan, score_pool, scoring_plan
from labelloop.selection import NothingToSelect, select_round
from labelloop_workers.guards import TRANSIENT_ERRORS, LockBusy, LockLost, project_lock

State = dict
_log = logging.getLogger(__name__)
_settings = get_settings()

RETRY = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": _settings.task_retry_backoff_max_s,
    "retry_jitter": True,
    "max_retries": _settings.task_max_retries,
}


class StageTask(Task):
    """A stage that fails for good (retries exhausted, or an error retrying cannot fix)
    ends its pipeline run as failed with the error; the chain stops there."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        state = args[0] if args and isinstance(args[0], dict) else kwargs.get("state") or {}
        run_id = state.get("pipeline_run_id")
        if run_id is None:
            return
        stage = self.name.removeprefix("labelloop.")
        message = f"{stage} failed: {type(exc).__name__}: {exc}"
        try:
            pipelines.finish(get_context(), run_id, PipelineStatus.failed, message=message)
        except Exception:  # the database itself may be what failed
            _log.exception("could not mark pipeline run %s failed", run_id)


def _stage(task: Task, state: State, stage: str, task_id: str | None = None) -> None:
    """Record the pipeline's stage; stop here when the run is no longer running."""
    run_id = state.get("pipeline_run_id")
    if run_id is None:
        return
    task_id = task_id or task.request.id
    if not pipelines.advance(get_context(), run_id, stage, state=state, task_id=task_id):
        _log.info("pipeline run %s is no longer running; %s skipped", run_id, stage)
        raise Ignore()


def _dispatcher(ctx: Context):
    from labelloop_workers.dispatch import CeleryDispatcher

    return CeleryDispatcher(ctx.settings)


@shared_task(name="labelloop.ingest", base=StageTask, **RETRY)
def ingest(
    state: State,
    path: str,
    fmt: str = "auto",
    skip_invalid: bool = False,
    label_map: dict | None = None,
    image_root: str | None = None,
) -> State:
    report = ingest_path(
        get_context(),
        state["project"],
        path,
        fmt=fmt,
        skip_invalid=skip_invalid,
        label_map=label_map,
        image_root=image_root,
    )
    ingests = [*state.get("ingests", []), report.to_dict()]
    return {**state, "ingests": ingests}


@shared_task(name="labelloop.freeze", base=StageTask, **RETRY)
def freeze(state: State, seed: int | None = None) -> State:
    result = freeze_stage(get_context(), state["project"], seed=seed)
    return {
        **state,
        "dataset_version_id": result.dataset_version_id,
        "dataset_version_created": result.created,
    }


# -- a pipeline run: sync -> freeze -> (stop early | train -> score -> select -> push) --


@shared_task(name="labelloop.trigger", base=StageTask, **RETRY)
def trigger(
    project: str,
    trigger: str = "beat",
    scheduled_for: str | None = None,
    params: dict | None = None,
) -> dict:
    """Request a pipeline run (beat's entry point): queued, or coalesced into the active
    one; a beat slot already requested is a no-op, so a redelivered firing runs once."""
    from datetime import datetime

    from labelloop.pipelines.dispatch import launch

    ctx = get_context()
    req = pipelines.request_pipeline(
        ctx,
        project,
        trigger=trigger,
        requested_by="beat" if trigger == "beat" else None,
        params=pipelines.PipelineParams.model_validate(params or {}),
        scheduled_for=datetime.fromisoformat(scheduled_for) if scheduled_for else None,
    )
    launch(ctx, _dispatcher(ctx), req)
    return {
        "pipeline_run_id": req.run_id,
        "created": req.created,
        "coalesced_into": req.coalesced_into,
        "duplicate": req.duplicate,
    }


@shared_task(name="labelloop.pipeline", bind=True, base=StageTask, **RETRY)
def pipeline(self, state: State) -> State:
    """Begin the run (after its debounce quiet time), sync the linked Label Studio projects,
    freeze, and stop early when there is nothing new to learn from; otherwise hand the rest
    to the train -> score -> select -> push chain."""
    from labelloop.labelstudio.sync import sync_labelstudio
    from labelloop.pipelines.triggers import labelstudio_links
    from labelloop_workers.pipeline import after_freeze

    ctx = get_context()
    run_id = state["pipeline_run_id"]
    began = pipelines.begin(ctx, run_id, self.request.id)
    if began.skip:
        _log.info("%s; nothing to do", began.skip)
        raise Ignore()
    if began.wait_s > 0:  # debounced: wake up when the quiet time is over
        task_id = str(uuid.uuid4())
        pipelines.set_task(ctx, run_id, task_id)
        pipeline.apply_async((state,), countdown=began.wait_s, task_id=task_id)
        raise Ignore()
    params = began.params or {}
    state = {**state, "project": began.project, "webhook_events": began.events}
    if params.get("sync", True):
        with ctx.db.session() as s:
            project = s.scalar(sql_select(Project).where(Project.name == began.project))
            links = labelstudio_links(project)
        synced = []
        for link in links:
            report = sync_labelstudio(
                ctx,
                began.project,
                link["url"],
                int(link["ls_project"]),
                label_map=link.get("label_map"),
            )
            synced.append(
                {
                    "ls_project": report.ls_project,
                    "tasks_changed": len(report.changed_task_ids),
                    "annotations_new": report.ingest.annotations_new,
                    "annotations_deleted": report.annotations_deleted,
                }
            )
        state["synced"] = {"labelstudio": synced}
    _stage(self, state, "freeze")
    try:
        frozen = freeze_stage(ctx, began.project)
    except InputError as exc:  # no labelled images yet
        return _stop(ctx, run_id, state, f"nothing to learn from: {exc}")
    state = {
        **state,
        "dataset_version_id": frozen.dataset_version_id,
        "dataset_version": frozen.number,
        "dataset_version_created": frozen.created,
    }
    recipe = params.get("recipe") or None
    done = None if frozen.created else _already_trained(ctx, frozen.dataset_version_id, params)
    if done is not None:
        return _stop(
            ctx,
            run_id,
            {**state, "model_version_id": done},
            f"no new annotations since dataset version {frozen.number}, which is already "
            f"trained (model version {done})",
        )
    rest = after_freeze(
        state,
        budget=int(params.get("budget") or ctx.settings.nightly_budget),
        strategy=params.get("strategy", "uncertainty"),
        target=params.get("push_to") or "file",
        overrides=recipe,
        finish=True,
    )
    rest.freeze()
    rest.apply_async()
    # Sent first, recorded second: a crash in between duplicates idempotent stages rather
    # than leaving the run stuck. The recorded task id makes a redelivered copy of this
    # task skip itself.
    _stage(self, state, "train", task_id=rest.tasks[0].id)
    return {**state, "continued": True}


def _already_trained(ctx: Context, dataset_version_id: int, params: dict) -> int | None:
    """Nothing new to learn from: the data is unchanged and a model was trained on it
    (with exactly the requested recipe, when the trigger asked for one)."""
    recipe = params.get("recipe") or None
    same = trained_version(ctx, dataset_version_id, overrides=recipe)
    if same is not None or params.get("recipe_requested"):
        return same
    with ctx.db.session() as s:
        return s.scalar(
            sql_select(ModelVersion.id)
            .where(ModelVersion.dataset_version_id == dataset_version_id)
            .order_by(ModelVersion.id.desc())
            .limit(1)
        )


def _stop(ctx: Context, run_id: int, state: State, reason: str) -> State:
    pipelines.finish(ctx, run_id, PipelineStatus.stopped, message=reason, state=state)
    _follow_up(ctx, state["project"])
    return {**state, "stopped": reason}


def _follow_up(ctx: Context, project: str) -> None:
    """Webhook events that arrived while the run worked may already call for the next."""
    from labelloop.pipelines.dispatch import launch
    from labelloop.pipelines.webhooks import follow_up

    with ctx.db.session() as s:
        project_id = s.scalar(sql_select(Project.id).where(Project.name == project))
    req = follow_up(ctx, project_id)
    if req is not None:
        launch(ctx, _dispatcher(ctx), req)


@shared_task(name="labelloop.pipeline_finish", bind=True, base=StageTask, **RETRY)
def pipeline_finish(self, state: State) -> State:
    ctx = get_context()
    run_id = state["pipeline_run_id"]
    if pipelines.finish(ctx, run_id, PipelineStatus.succeeded, state=state):
        _follow_up(ctx, state["project"])
    return state


# -- the stages after freeze --------------------------------------------------------


class _Watch:
    """Progress hook of a training in a worker: stops it when the lock was lost, and
    keeps the pipeline run's sign of life fresh."""

    def __init__(self, ctx: Context, held, run_id: int | None, every_s: float = 30.0):
        self.ctx, self.held, self.run_id, self.every_s = ctx, held, run_id, every_s
        self._last = time.monotonic()

    def __call__(self, progress: dict) -> None:
        self.held.check()
        if self.run_id is not None and time.monotonic() - self._last > self.every_s:
            self._last = time.monotonic()
            pipelines.heartbeat(self.ctx, self.run_id)


@shared_task(name="labelloop.train", bind=True, base=StageTask, max_retries=None)
def train(
    self, state: State, overrides: dict | None = None, lock_retry_s: float | None = None
) -> State:
    """One training per project at a time: a second trigger waits for the lock and then
    finds the finished model version of the same (dataset version, recipe). A redelivered
    task resumes from the run's last checkpoint. Waiting for the lock retries without
    limit (a dead holder's lock expires); errors retry `task_max_retries` times."""
    ctx = get_context()
    settings = ctx.settings
    run_id = state.get("pipeline_run_id")
    try:
        _stage(self, state, "train")
        req = request_run(ctx, state["dataset_version_id"], overrides=overrides)
        if run_id is not None:
            pipelines.advance(ctx, run_id, "train", training_run_id=req.run_id)
        mv_id = req.model_version_id
        if mv_id is None:
            with project_lock(settings, state["project"]) as held:
                mv_id = execute_run(
                    ctx,
                    req.run_id,
                    task_id=self.request.id,
                    worker=self.request.hostname,
                    on_progress=_Watch(ctx, held, run_id),
                )
    except LockBusy:
        raise self.retry(countdown=lock_retry_s or settings.lock_retry_s) from None
    except Cancelled:
        _log.info("pipeline run %s: training cancelled", run_id)
        raise Ignore() from None
    except (LockLost, *TRANSIENT_ERRORS) as exc:
        errors = int(state.get("train_errors", 0)) + 1
        if errors > settings.task_max_retries:
            raise
        raise self.retry(
            args=({**state, "train_errors": errors},),
            kwargs={"overrides": overrides, "lock_retry_s": lock_retry_s},
            countdown=min(2**errors, settings.task_retry_backoff_max_s),
            exc=exc,
        ) from exc
    state = {k: v for k, v in state.items() if k != "train_errors"}
    return {**state, "training_run_id": req.run_id, "model_version_id": mv_id}


@shared_task(name="labelloop.score", bind=True, base=StageTask, **RETRY)
def score(self, state: State, method: str | None = None, embed: bool = True) -> State:
    """Score the pool; a pool larger than one shard fans out as a chord of shard tasks
    (each idempotent: it fills in only what is missing), so many cpu workers share it.
    The chain continues after the chord's callback."""
    _stage(self, state, "score")
    ctx = get_context()
    mv = state["model_version_id"]
    methods, todo = scoring_plan(ctx, mv, [method] if method else None)
    work = todo + (embedding_plan(ctx, mv) if embed else [])
    size = ctx.settings.score_shard_size
    if ctx.settings.embedded or len(work) <= size:
        result = score_pool(ctx, mv, methods=methods, embed=embed)
        summary = {"scored": result.scored, "images_per_s": round(result.images_per_s, 2)}
        return {**state, "score": {"method": methods[0], "methods": methods, **summary}}
    shards = [work[i : i + size] for i in range(0, len(work), size)]
    fan_out = chord(
        [score_shard.s(mv, methods, ids, embed) for ids in shards], score_done.s(state, methods)
    )
    raise self.replace(fan_out)


@shared_task(name="labelloop.score_shard", **RETRY)
def score_shard(
    model_version_id: int, methods: list[str], image_ids: list[int], embed: bool = True
) -> dict:
    ctx = get_context()
    result = score_pool(ctx, model_version_id, methods=methods, image_ids=image_ids, embed=embed)
    return {"scored": result.scored, "seconds": result.seconds}


@shared_task(name="labelloop.score_done")
def score_done(shards: list[dict], state: State, methods: list[str]) -> State:
    scored = sum(r["scored"] for r in shards)
    busy = sum(r["seconds"] for r in shards)
    summary = {
        "scored": scored,
        "shards": len(shards),
        "images_per_s": round(scored / busy, 2) if busy else 0.0,  # per worker
    }
    return {**state, "score": {"method": methods[0], "methods": methods, **summary}}


@shared_task(name="labelloop.select", bind=True, base=StageTask, **RETRY)
def select(
    self,
    state: State,
    budget: int,
    strategy: str = "uncertainty",
    seed: int = 0,
    method: str | None = None,
    batch_size: int | None = None,
    params: dict | None = None,
) -> State:
    _stage(self, state, "select")
    ctx = get_context()
    try:
        result = select_round(
            ctx,
            state["project"],
            budget=budget,
            strategy=strategy,
            model_version_id=state.get("model_version_id"),
            method=method or (state.get("score") or {}).get("method"),
            seed=seed,
            batch_size=batch_size,
            params=params,
        )
    except NothingToSelect as exc:
        run_id = state.get("pipeline_run_id")
        if run_id is None:
            raise
        # The model is trained and recorded; there is just nothing to send this time.
        pipelines.finish(ctx, run_id, PipelineStatus.succeeded, message=str(exc), state=state)
        _follow_up(ctx, state["project"])
        raise Ignore() from None
    return {**state, "round_id": result.round_id}


@shared_task(name="labelloop.push.stage", bind=True, base=StageTask, **RETRY)
def push(
    self,
    state: State,
    target: str = "file",
    out_dir: str | None = None,
    url: str | None = None,
    title: str | None = None,
) -> State:
    _stage(self, state, "push")
    result = push_round(
        get_context(), state["round_id"], target, out_dir=out_dir, url=url, title=title
    )
    return {**state, "push_id": result.push_id, "push_destination": result.destination}


# -- housekeeping ---------------------------------------------------------------------


@shared_task(name="labelloop.sweep", base=StageTask, **RETRY)
def sweep() -> dict:
    """Beat's safety net: end pipeline runs that lost every sign of life (their messages
    were lost), and start the retrain that webhook events call for when no run was there
    to pick them up."""
    from labelloop.pipelines.dispatch import launch
    from labelloop.pipelines.webhooks import follow_up

    ctx = get_context()
    abandoned = pipelines.abandon_stale(ctx)
    with ctx.db.session() as s:
        ids = list(s.scalars(sql_select(Project.id).order_by(Project.id)))
    started = []
    for project_id in ids:
        req = follow_up(ctx, project_id)
        if req is not None:
            launch(ctx, _dispatcher(ctx), req)
            started.append(req.run_id)
    return {"abandoned": abandoned, "started": started}
