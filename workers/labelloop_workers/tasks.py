"""Thin tasks: ids in, call the stage, ids out.

Each task takes and returns a small `state` dict of ids (project name, dataset version,
model version, round), so a Celery chain passes each stage's committed ids to the next
and a task can be retried or redelivered with exactly the same input. All logic lives in
the stage functions of `labelloop`; the same code runs in the embedded demo.
`shared_task` binds them to whichever app is current: the production app of
`labelloop_workers.app` or the demo's embedded one."""

from __future__ import annotations

from celery import chord, shared_task
from sqlalchemy import select as sql_select

from labelloop.context import get_context
from labelloop.datasets import freeze as freeze_stage
from labelloop.db.models import ModelVersion, Project
from labelloop.errors import ExternalServiceError
from labelloop.ingest import ingest_path
from labelloop.pool import embedding_plan, score_pool, scoring_plan
from labelloop.push import push_round
from labelloop.runs import execute_run, request_run
from labelloop.selection import select_round
from labelloop_workers.guards import LockBusy, project_lock

State = dict

IO_RETRY = {
    "autoretry_for": (ExternalServiceError,),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": 6,
}


@shared_task(name="labelloop.ingest", **IO_RETRY)
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


@shared_task(name="labelloop.freeze")
def freeze(state: State, seed: int | None = None) -> State:
    result = freeze_stage(get_context(), state["project"], seed=seed)
    return {
        **state,
        "dataset_version_id": result.dataset_version_id,
        "dataset_version_created": result.created,
    }


@shared_task(name="labelloop.train", bind=True, max_retries=None)
def train(self, state: State, overrides: dict | None = None, lock_retry_s: int = 30) -> State:
    """One training per project at a time; a second trigger waits for the lock and then
    finds the finished model version of the same (dataset version, recipe)."""
    ctx = get_context()
    req = request_run(ctx, state["dataset_version_id"], overrides=overrides)
    if req.model_version_id is None:
        try:
            with project_lock(ctx.settings, state["project"]):
                mv_id = execute_run(ctx, req.run_id, task_id=self.request.id)
        except LockBusy:
            raise self.retry(countdown=lock_retry_s) from None
    else:
        mv_id = req.model_version_id
    return {**state, "training_run_id": req.run_id, "model_version_id": mv_id}


@shared_task(name="labelloop.score", bind=True)
def score(self, state: State, method: str | None = None, embed: bool = True) -> State:
    """Score the pool; a pool larger than one shard fans out as a chord of shard tasks
    (each idempotent: it fills in only what is missing), so many cpu workers share it.
    The chain continues after the chord's callback."""
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


@shared_task(name="labelloop.score_shard")
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


@shared_task(name="labelloop.select")
def select(
    state: State,
    budget: int,
    strategy: str = "uncertainty",
    seed: int = 0,
    method: str | None = None,
    batch_size: int | None = None,
    params: dict | None = None,
) -> State:
    result = select_round(
        get_context(),
        state["project"],
        budget=budget,
        strategy=strategy,
        model_version_id=state.get("model_version_id"),
        method=method or (state.get("score") or {}).get("method"),
        seed=seed,
        batch_size=batch_size,
        params=params,
    )
    return {**state, "round_id": result.round_id}


@shared_task(name="labelloop.push", **IO_RETRY)
def push(
    state: State,
    target: str = "file",
    out_dir: str | None = None,
    url: str | None = None,
    title: str | None = None,
) -> State:
    result = push_round(
        get_context(), state["round_id"], target, out_dir=out_dir, url=url, title=title
    )
    return {**state, "push_id": result.push_id, "push_destination": result.destination}


@shared_task(name="labelloop.project_round")
def project_round(project: str, budget: int, target: str = "file") -> State:
    """Freeze; stop early when the labels are unchanged and already trained on, else
    continue with train -> score -> select -> push as a chain."""
    from labelloop_workers.pipeline import after_freeze

    ctx = get_context()
    state = freeze({"project": project})
    with ctx.db.session() as s:
        trained = s.scalar(
            sql_select(ModelVersion.id)
            .where(ModelVersion.dataset_version_id == state["dataset_version_id"])
            .limit(1)
        )
    if not state["dataset_version_created"] and trained is not None:
        return {**state, "stopped": "no new annotations since the last trained dataset version"}
    after_freeze(state, budget=budget, target=target).apply_async()
    return {**state, "continued": True}


@shared_task(name="labelloop.nightly")
def nightly() -> list[str]:
    """Enqueue one round per project (each stops early when nothing changed)."""

    ctx = get_context()
    with ctx.db.session() as s:
        names = list(s.scalars(sql_select(Project.name).order_by(Project.name)))
    for name in names:
        project_round.delay(name, ctx.settings.nightly_budget, ctx.settings.nightly_push_to)
    return names
