"""Pipeline runs in the database: one per project at a time, coalescing, the beat slot
key, debounce, cancellation, abandoned runs (SQLite; PostgreSQL in the integration suite)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from labelloop.db.models import PipelineRun, TrainingRun, WebhookEvent
from labelloop.errors import ConflictError, InputError, NotFoundError
from labelloop.pipelines import runs as pipelines
from labelloop.pipelines.runs import PipelineParams, PipelineStatus, request_pipeline
from labelloop.projects import create_project


@pytest.fixture
def project(ctx):
    with ctx.db.session() as s:
        create_project(s, "cells", "segmentation", ["RBC", "WBC"])
    return "cells"


def _runs(ctx) -> list[tuple[int, str, int | None]]:
    with ctx.db.session() as s:
        return [
            (r.id, r.status, r.coalesced_into_id)
            for r in s.scalars(select(PipelineRun).order_by(PipelineRun.id))
        ]


def test_a_second_trigger_is_coalesced_until_the_first_ends(ctx, project):
    first = request_pipeline(ctx, project, trigger="api", requested_by="alice")
    assert first.created and first.task_id and first.coalesced_into is None
    second = request_pipeline(ctx, project, trigger="beat")
    assert not second.created and second.coalesced_into == first.run_id
    info = pipelines.run_info(ctx, second.run_id)
    assert info["status"] == "coalesced" and info["finished_at"] is not None
    assert f"coalesced into pipeline run {first.run_id} (queued)" == info["message"]
    assert pipelines.finish(ctx, first.run_id, PipelineStatus.succeeded)
    assert not pipelines.finish(ctx, first.run_id, PipelineStatus.failed)  # idempotent
    third = request_pipeline(ctx, project, trigger="cli")
    assert third.created
    assert _runs(ctx) == [
        (first.run_id, "succeeded", None),
        (second.run_id, "coalesced", first.run_id),
        (third.run_id, "queued", None),
    ]


def test_twenty_concurrent_triggers_queue_exactly_one_run(ctx, project):
    barrier = threading.Barrier(20)
    results, errors = [], []

    def trigger() -> None:
        barrier.wait()
        try:
            results.append(request_pipeline(ctx, project, trigger="api"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=trigger) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    created = [r for r in results if r.created]
    assert len(created) == 1
    assert {r.coalesced_into for r in results if not r.created} == {created[0].run_id}
    statuses = [status for _, status, _ in _runs(ctx)]
    assert statuses.count("queued") == 1 and statuses.count("coalesced") == 19


def test_a_beat_slot_is_requested_once(ctx, project):
    slot = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    first = request_pipeline(ctx, project, trigger="beat", scheduled_for=slot)
    again = request_pipeline(ctx, project, trigger="beat", scheduled_for=slot)
    assert first.created and again.duplicate and again.run_id == first.run_id
    assert len(_runs(ctx)) == 1


def test_bad_parameters_are_refused_and_nothing_is_written(ctx, project):
    with pytest.raises(InputError, match="epochs"):
        request_pipeline(ctx, project, trigger="api", params=PipelineParams(recipe={"epochs": 0}))
    with pytest.raises(InputError, match="no_such_field"):
        request_pipeline(
            ctx, project, trigger="api", params=PipelineParams(recipe={"no_such_field": 1})
        )
    with pytest.raises(InputError, match="push_to"):
        request_pipeline(ctx, project, trigger="api", params=PipelineParams(push_to="fax"))
    with pytest.raises(InputError, match="unknown strategy"):
        request_pipeline(ctx, project, trigger="api", params=PipelineParams(strategy="best"))
    with pytest.raises(NotFoundError, match="no project named 'nope'"):
        request_pipeline(ctx, "nope", trigger="api")
    with pytest.raises(InputError, match="unknown trigger"):
        request_pipeline(ctx, project, trigger="cron")
    assert _runs(ctx) == []


def test_project_defaults_and_overrides_are_resolved_into_params(ctx, project):
    from labelloop.pipelines.triggers import update_triggers
    from labelloop.projects import get_project

    with ctx.db.session() as s:
        update_triggers(get_project(s, project), {"budget": 7, "recipe": {"epochs": 3}})
    req = request_pipeline(
        ctx, project, trigger="api", params=PipelineParams(recipe={"batch_size": 2})
    )
    params = pipelines.run_info(ctx, req.run_id)["params"]
    assert params == {
        "budget": 7,
        "push_to": "file",
        "strategy": "power",  # the default of a segmentation project (labelloop.kinds)
        "recipe": {"epochs": 3, "batch_size": 2},
        "recipe_requested": True,
        "sync": True,
        "round_model": "production",
    }


def test_begin_claims_pending_events_and_only_its_task_may_begin(ctx, project):
    with ctx.db.session() as s:
        pid = s.scalar(select(PipelineRun.project_id).limit(1))  # none yet
        assert pid is None
    req = request_pipeline(ctx, project, trigger="api")
    with ctx.db.session() as s:
        run = s.get(PipelineRun, req.run_id)
        s.add_all(
            WebhookEvent(project_id=run.project_id, action="ANNOTATION_CREATED", annotations=1)
            for _ in range(3)
        )
    stranger = pipelines.begin(ctx, req.run_id, "another-task")
    assert stranger.skip and "belongs to task" in stranger.skip
    began = pipelines.begin(ctx, req.run_id, req.task_id)
    assert began.skip is None and began.project == project and began.events == 3
    assert began.params.budget == ctx.settings.nightly_budget
    info = pipelines.run_info(ctx, req.run_id)
    assert info["status"] == "running" and info["stage"] == "sync" and info["webhook_events"] == 3
    # A retry of the same task (same id) begins again: the sync stage is idempotent.
    assert pipelines.begin(ctx, req.run_id, req.task_id).skip is None
    assert pipelines.advance(ctx, req.run_id, "train", state={"project": project, "x": [1]})
    assert pipelines.run_info(ctx, req.run_id)["state"] == {"project": project}


def test_a_debounced_run_waits_for_its_quiet_time(ctx, project):
    req = request_pipeline(ctx, project, trigger="webhook", delay_s=30)
    assert req.countdown == 30
    began = pipelines.begin(ctx, req.run_id, req.task_id)
    assert began.skip is None and 25 < began.wait_s <= 30
    assert pipelines.run_info(ctx, req.run_id)["status"] == "queued"
    pipelines.set_task(ctx, req.run_id, "wake-up")
    assert pipelines.begin(ctx, req.run_id, req.task_id).skip  # the superseded message


def test_cancel_marks_the_run_and_its_training(ctx, project):
    from labelloop.datasets.freeze import freeze
    from labelloop.ingest import ingest_path
    from labelloop.runs import request_run
    from tests.factories import small_export

    ingest_path(
        ctx,
        project,
        small_export(ctx.settings.data_dir / "src", n=2),
        label_map={"Platelets": "WBC"},
    )
    tr = request_run(ctx, freeze(ctx, project).dataset_version_id)
    req = request_pipeline(ctx, project, trigger="api")
    pipelines.begin(ctx, req.run_id, req.task_id)
    pipelines.advance(ctx, req.run_id, "train", training_run_id=tr.run_id)
    result = pipelines.cancel(ctx, req.run_id, "wrong recipe")
    assert (result.was, result.training_run_id, result.task_id) == (
        "running",
        tr.run_id,
        req.task_id,
    )
    info = pipelines.run_info(ctx, req.run_id)
    assert info["status"] == "cancelled" and info["message"] == "wrong recipe"
    assert info["training"]["status"] == "cancelled"
    assert not pipelines.advance(ctx, req.run_id, "score")  # later stages skip themselves
    with pytest.raises(ConflictError, match="already cancelled"):
        pipelines.cancel(ctx, req.run_id)
    assert request_pipeline(ctx, project, trigger="api").created  # the project is free again
    with ctx.db.session() as s:
        assert s.get(TrainingRun, tr.run_id).error == "wrong recipe"


def test_a_run_without_sign_of_life_is_abandoned(ctx, project):
    old = request_pipeline(ctx, project, trigger="api")
    with ctx.db.session() as s:
        s.get(PipelineRun, old.run_id).updated_at = datetime.now(UTC) - timedelta(days=2)
    fresh = request_pipeline(ctx, project, trigger="api")
    assert fresh.created
    info = pipelines.run_info(ctx, old.run_id)
    assert info["status"] == "failed" and info["message"].startswith("abandoned")
    with ctx.db.session() as s:
        s.get(PipelineRun, fresh.run_id).updated_at = datetime.now(UTC) - timedelta(days=2)
    assert pipelines.abandon_stale(ctx) == [fresh.run_id]
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).where(PipelineRun.active_project_id.is_not(None))) == 0


class _Recorder:
    """A dispatcher that only records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def start_pipeline(self, run_id: int, task_id: str, countdown: float = 0.0) -> None:
        self.sent.append((run_id, task_id))


def test_a_queued_run_that_was_never_sent_is_sent_again_once(ctx, project):
    """The run is committed, then the process that queued it dies before sending (or the
    message is lost): beat's sweep sends it again under a new task id, and the copy with
    the old id, should it turn up after all, skips itself."""
    from labelloop.pipelines.decision import sweep

    req = request_pipeline(ctx, project, trigger="api")  # committed, never sent
    recorder = _Recorder()
    assert sweep(ctx, recorder)["resent"] == []  # not overdue yet
    with ctx.db.session() as s:
        s.get(PipelineRun, req.run_id).updated_at = datetime.now(UTC) - timedelta(minutes=11)
    assert sweep(ctx, recorder)["resent"] == [req.run_id]
    ((run_id, task_id),) = recorder.sent
    assert run_id == req.run_id and task_id != req.task_id
    assert sweep(ctx, recorder)["resent"] == []  # sent again once, not at every sweep
    assert pipelines.begin(ctx, req.run_id, req.task_id).skip  # the lost copy
    began = pipelines.begin(ctx, req.run_id, task_id)
    assert not began.skip and pipelines.run_info(ctx, req.run_id)["status"] == "running"
