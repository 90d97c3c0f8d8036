"""The stage tasks: ids in, call the stage function of `labelloop`, ids out.

Each task takes and returns the chain state (`labelloop.pipelines.state.ChainState` as
JSON), so a Celery chain passes each stage's committed ids to the next and a task can be
retried or redelivered with exactly the same input. What a task adds here is what only a
worker needs: retry policy, the training lock, a score fan-out over many workers, and the
pipeline run's bookkeeping. `shared_task` binds the tasks to whichever app is current:
the production app of `labelloop_workers.app` or the demo's embedded one.

A state carrying `pipeline_run_id` belongs to a pipeline run (labelloop.pipelines.runs):
each task first records its stage there and skips itself (dropping the rest of the chain)
when the run was cancelled or already ended, and a task that fails for good marks the
run failed with its error. Transient errors (Label Studio, storage, the database
connection) are retried with exponential backoff before that.
"""

from __future__ import annotations

import logging
import time

from celery import Task, chord, shared_task
from celery.exceptions import Ignore

from labelloop.config import get_settings
from labelloop.context import Context, get_context
from labelloop.datasets.freeze import freeze as freeze_dataset
from labelloop.errors import Cancelled, Interrupted
from labelloop.ingest import ingest_path
from labelloop.pipelines import runs as pipelines
from labelloop.pipelines.decision import end_run
from labelloop.pipelines.runs import PipelineStatus
from labelloop.pipelines.state import ChainState
from labelloop.push.stage import push_round
from labelloop.registry import round_model as choose_round_model
from labelloop.runs import execute_run, request_run
from labelloop.scoring.stage import embedding_plan, score_pool, scoring_plan
from labelloop.selection import NothingToSelect, select_round
from labelloop_workers.dispatch import CeleryDispatcher
from labelloop_workers.guards import (
    RACE_ERRORS,
    TRANSIENT_ERRORS,
    LockBusy,
    LockLost,
    project_lock,
)

Message = dict  # a ChainState as JSON: what Celery passes between the tasks
_log = logging.getLogger(__name__)
_settings = get_settings()

RETRY = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": _settings.task_retry_backoff_max_s,
    "retry_jitter": True,
    "max_retries": _settings.task_max_retries,
}
# Stages that get-or-create rows others may be creating at the same moment.
RETRY_RACES = {**RETRY, "autoretry_for": RACE_ERRORS}


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


def enter(task: Task, state: ChainState, stage: str, task_id: str | None = None) -> None:
    """Record the pipeline's stage; stop here (Ignore) when the run is no longer running."""
    run_id = state.pipeline_run_id
    if run_id is None:
        return
    task_id = task_id or task.request.id
    if not pipelines.advance(get_context(), run_id, stage, state=state.message(), task_id=task_id):
        _log.info("pipeline run %s is no longer running; %s skipped", run_id, stage)
        raise Ignore()


def dispatcher(ctx: Context) -> CeleryDispatcher:
    """How a task hands a follow-up pipeline run to the workers."""
    return CeleryDispatcher(ctx.settings)


@shared_task(name="labelloop.ingest", base=StageTask, **RETRY_RACES)
def ingest(
    state: Message,
    path: str,
    fmt: str = "auto",
    skip_invalid: bool = False,
    label_map: dict | None = None,
    image_root: str | None = None,
) -> Message:
    st = ChainState.load(state)
    report = ingest_path(
        get_context(),
        st.project_name,
        path,
        fmt=fmt,
        skip_invalid=skip_invalid,
        label_map=label_map,
        image_root=image_root,
    )
    return st.but(ingests=[*(st.ingests or []), report.to_dict()]).message()


@shared_task(name="labelloop.freeze", base=StageTask, **RETRY)
def freeze(state: Message, seed: int | None = None) -> Message:
    st = ChainState.load(state)
    result = freeze_dataset(get_context(), st.project_name, seed=seed)
    return st.but(
        dataset_version_id=result.dataset_version_id, dataset_version_created=result.created
    ).message()


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
    self,
    state: Message,
    overrides: dict | None = None,
    lock_retry_s: float | None = None,
    round_model: str = "production",
) -> Message:
    """One training per project at a time: a second trigger waits for the lock and then
    finds the finished model version of the same (dataset version, recipe). A redelivered
    task resumes from the run's last checkpoint. Waiting for the lock retries without
    limit (a dead holder's lock expires); errors retry `task_max_retries` times.

    The state it hands on names the round's model (`registry.round_model`): production
    unless `round_model="candidate"`, so a candidate that lost the gate scores nothing."""
    ctx = get_context()
    settings = ctx.settings
    st = ChainState.load(state)
    run_id = st.pipeline_run_id
    options = {"overrides": overrides, "lock_retry_s": lock_retry_s, "round_model": round_model}

    def again(message: Message, **retry):
        return self.retry(args=(message,), kwargs=options, **retry)

    try:
        enter(self, st, "train")
        req = request_run(ctx, st.dataset_version_id, overrides=overrides)
        if run_id is not None:
            pipelines.advance(ctx, run_id, "train", training_run_id=req.run_id)
        mv_id = req.model_version_id
        if mv_id is None:
            with project_lock(settings, st.project_name) as held:
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
    except Interrupted as exc:  # the worker is stopping: a new message, at once
        _log.info("pipeline run %s: %s; handed back to the queue", run_id, exc)
        raise again(st.message(), countdown=0) from None
    except (LockLost, *TRANSIENT_ERRORS) as exc:
        errors = (st.train_errors or 0) + 1
        if errors > settings.task_max_retries:
            raise
        raise again(
            st.but(train_errors=errors).message(),
            countdown=min(2**errors, settings.task_retry_backoff_max_s),
            exc=exc,
        ) from exc
    chosen = choose_round_model(ctx, mv_id, round_model)
    return st.but(
        train_errors=None,
        training_run_id=req.run_id,
        model_version_id=mv_id,
        round_model_version_id=chosen.id,
        round_model=chosen.name,
        round_model_reason=chosen.reason,
    ).message()


@shared_task(name="labelloop.score", bind=True, base=StageTask, **RETRY)
def score(self, state: Message, method: str | None = None, embed: bool = True) -> Message:
    """Score the pool; a pool larger than one shard fans out as a chord of shard tasks
    (each idempotent: it fills in only what is missing), so many cpu workers share it.
    The chain continues after the chord's callback."""
    st = ChainState.load(state)
    enter(self, st, "score")
    ctx = get_context()
    mv = st.scoring_model_id
    methods, todo = scoring_plan(ctx, mv, [method] if method else None)
    work = todo + (embedding_plan(ctx, mv) if embed else [])
    size = ctx.settings.score_shard_size
    if ctx.settings.embedded or len(work) <= size:
        result = score_pool(ctx, mv, methods=methods, embed=embed)
        summary = {"scored": result.scored, "images_per_s": round(result.images_per_s, 2)}
        return _scored(st, methods, summary)
    shards = [work[i : i + size] for i in range(0, len(work), size)]
    fan_out = chord(
        [score_shard.s(mv, methods, ids, embed) for ids in shards],
        score_done.s(st.message(), methods),
    )
    raise self.replace(fan_out)


def _scored(st: ChainState, methods: list[str], summary: dict) -> Message:
    return st.but(score={"method": methods[0], "methods": methods, **summary}).message()


@shared_task(name="labelloop.score_shard", **RETRY)
def score_shard(
    model_version_id: int, methods: list[str], image_ids: list[int], embed: bool = True
) -> dict:
    ctx = get_context()
    result = score_pool(ctx, model_version_id, methods=methods, image_ids=image_ids, embed=embed)
    return {"scored": result.scored, "seconds": result.seconds}


@shared_task(name="labelloop.score_done")
def score_done(shards: list[dict], state: Message, methods: list[str]) -> Message:
    scored = sum(r["scored"] for r in shards)
    busy = sum(r["seconds"] for r in shards)
    summary = {
        "scored": scored,
        "shards": len(shards),
        "images_per_s": round(scored / busy, 2) if busy else 0.0,  # per worker
    }
    return _scored(ChainState.load(state), methods, summary)


@shared_task(name="labelloop.select", bind=True, base=StageTask, **RETRY)
def select(
    self,
    state: Message,
    budget: int,
    strategy: str | None = None,  # the project's kind's
    seed: int = 0,
    method: str | None = None,
    batch_size: int | None = None,
    params: dict | None = None,
    control_fraction: float = 0.0,
) -> Message:
    st = ChainState.load(state)
    enter(self, st, "select")
    ctx = get_context()
    try:
        result = select_round(
            ctx,
            st.project_name,
            budget=budget,
            strategy=strategy,
            model_version_id=st.scoring_model_id,
            method=method or (st.score or {}).get("method"),
            seed=seed,
            batch_size=batch_size,
            params=params,
            control_fraction=control_fraction,
        )
    except NothingToSelect as exc:
        if st.pipeline_run_id is None:
            raise
        # The model is trained and recorded; there is just nothing to send this time.
        end_run(ctx, dispatcher(ctx), st, PipelineStatus.succeeded, message=str(exc))
        raise Ignore() from None
    guard = None
    if result.guard is not None:  # the pipeline run reports what the guard decided
        keep = ("decision", "policy", "reason", "gain_mean", "gain_se", "metric")
        guard = {k: result.guard[k] for k in keep} | {"control": len(result.control)}
    return st.but(round_id=result.round_id, guard=guard).message()


@shared_task(name="labelloop.push", bind=True, base=StageTask, **RETRY)
def push(
    self,
    state: Message,
    target: str = "file",
    out_dir: str | None = None,
    url: str | None = None,
    title: str | None = None,
) -> Message:
    st = ChainState.load(state)
    enter(self, st, "push")
    ctx = get_context()
    result = push_round(ctx, st.round_id, target, out_dir=out_dir, url=url, title=title)
    refreshed = None
    if target == "labelstudio" and st.scoring_model_id is not None:
        # Open rounds pushed earlier get this model's predictions too (annotators always
        # see the best model's, with their scores shown).
        from labelloop.labelstudio.push import refresh_open_rounds

        refreshed = refresh_open_rounds(ctx, st.project_name, st.scoring_model_id, url=url)
    return st.but(
        push_id=result.push_id, push_destination=result.destination, refreshed_rounds=refreshed
    ).message()
