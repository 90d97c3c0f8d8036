"""What a pipeline run does next, decided in one place.

The workers' `labelloop.pipeline` task asks `next_step` once. It begins the run, syncs
the project's linked Label Studio projects and freezes, then answers with one of:
`Wait` (debounced: try again later), `Skip` (the run is no longer this task's), `Stop`
(nothing new to learn from; the run is already ended) or `Continue` (train -> score ->
select -> push with the run's resolved parameters). `end_run` ends a run and queues the
follow-up run that webhook events may call for; `sweep` is beat's safety net for runs
whose messages were lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from labelloop.context import Context
from labelloop.datasets.freeze import freeze
from labelloop.db.models import ModelVersion, Project
from labelloop.errors import InputError
from labelloop.pipelines.dispatch import Dispatcher, launch
from labelloop.pipelines.runs import (
    PipelineStatus,
    RunParams,
    abandon_stale,
    advance,
    begin,
    finish,
    unsent_runs,
)
from labelloop.pipelines.state import ChainState
from labelloop.pipelines.triggers import labelstudio_links
from labelloop.pipelines.webhooks import follow_up
from labelloop.projects import get_project
from labelloop.runs import trained_version

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wait:
    seconds: float  # the run's debounce quiet time is not over yet


@dataclass(frozen=True)
class Skip:
    reason: str  # cancelled, already ended, or taken over by another task


@dataclass(frozen=True)
class Stop:
    state: ChainState
    reason: str


@dataclass(frozen=True)
class Continue:
    state: ChainState  # after freeze: the dataset version to train on
    params: RunParams


Step = Wait | Skip | Stop | Continue


def next_step(ctx: Context, dispatcher: Dispatcher, run_id: int, task_id: str) -> Step:
    """Begin run `run_id` as task `task_id`, sync, freeze and decide whether to train.
    A `Stop` is already recorded (and its follow-up queued through `dispatcher`)."""
    began = begin(ctx, run_id, task_id)
    if began.skip:
        return Skip(began.skip)
    if began.wait_s > 0:
        return Wait(began.wait_s)
    params = began.params
    state = ChainState(pipeline_run_id=run_id, project=began.project, webhook_events=began.events)
    if params.sync:
        state = state.but(synced={"labelstudio": sync_linked(ctx, began.project)})
    if not advance(ctx, run_id, "freeze", state=state.message()):
        return Skip(f"pipeline run {run_id} is no longer running; freeze skipped")
    try:
        frozen = freeze(ctx, began.project)
    except InputError as exc:  # no labelled images yet
        return _stop(ctx, dispatcher, state, f"nothing to learn from: {exc}")
    state = state.but(
        dataset_version_id=frozen.dataset_version_id,
        dataset_version=frozen.number,
        dataset_version_created=frozen.created,
    )
    done = None if frozen.created else already_trained(ctx, frozen.dataset_version_id, params)
    if done is not None:
        return _stop(
            ctx,
            dispatcher,
            state.but(model_version_id=done),
            f"no new annotations since dataset version {frozen.number}, which is already "
            f"trained (model version {done})",
        )
    return Continue(state, params)


def _stop(ctx: Context, dispatcher: Dispatcher, state: ChainState, reason: str) -> Stop:
    end_run(ctx, dispatcher, state, PipelineStatus.stopped, message=reason)
    return Stop(state, reason)


def sync_linked(ctx: Context, project_name: str) -> list[dict[str, Any]]:
    """Pull what changed in each Label Studio project linked to the project."""
    from labelloop.labelstudio.sync import sync_labelstudio

    with ctx.db.session() as s:
        links = labelstudio_links(get_project(s, project_name))
    synced = []
    for link in links:
        report = sync_labelstudio(
            ctx, project_name, link["url"], int(link["ls_project"]), label_map=link.get("label_map")
        )
        synced.append(
            {
                "ls_project": report.ls_project,
                "tasks_changed": len(report.changed_task_ids),
                "annotations_new": report.ingest.annotations_new,
                "annotations_deleted": report.annotations_deleted,
            }
        )
    return synced


def already_trained(ctx: Context, dataset_version_id: int, params: RunParams) -> int | None:
    """Nothing new to learn from: a model was trained on this dataset version (with
    exactly the requested recipe, when the trigger asked for one)."""
    same = trained_version(ctx, dataset_version_id, overrides=params.recipe or None)
    if same is not None or params.recipe_requested:
        return same
    with ctx.db.session() as s:
        return s.scalar(
            select(ModelVersion.id)
            .where(ModelVersion.dataset_version_id == dataset_version_id)
            .order_by(ModelVersion.id.desc())
            .limit(1)
        )


def end_run(
    ctx: Context,
    dispatcher: Dispatcher,
    state: ChainState,
    status: PipelineStatus,
    *,
    message: str | None = None,
) -> None:
    """End the state's pipeline run (a no-op when it already ended), then start the run
    that webhook events which arrived meanwhile may already call for."""
    run_id = state.pipeline_run_id
    if run_id is None:
        raise ValueError("the chain state belongs to no pipeline run")
    finish(ctx, run_id, status, message=message, state=state.message())
    with ctx.db.session() as s:
        project_id = get_project(s, state.project_name).id
    _follow_up(ctx, dispatcher, project_id)


def _follow_up(ctx: Context, dispatcher: Dispatcher, project_id: int) -> int | None:
    req = follow_up(ctx, project_id)
    if req is None:
        return None
    launch(ctx, dispatcher, req)
    return req.run_id


def sweep(ctx: Context, dispatcher: Dispatcher) -> dict[str, list[int]]:
    """End pipeline runs that lost every sign of life (their messages were lost), send
    again the queued runs whose first task never started, and start the retrains that
    webhook events call for when no run was there to pick them up. Returns the ids."""
    abandoned = abandon_stale(ctx)
    resent = []
    for run_id, task_id in unsent_runs(ctx):
        try:
            dispatcher.start_pipeline(run_id, task_id)
            resent.append(run_id)
        except Exception as exc:  # the broker is still down: the next sweep tries again
            _log.warning("could not send pipeline run %s again: %s", run_id, exc)
    with ctx.db.session() as s:
        project_ids = list(s.scalars(select(Project.id).order_by(Project.id)))
    started = [r for pid in project_ids if (r := _follow_up(ctx, dispatcher, pid)) is not None]
    return {"abandoned": abandoned, "resent": resent, "started": started}
