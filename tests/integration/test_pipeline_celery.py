"""The whole loop through a real `celery worker` process, Redis broker and PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labelloop.context import Context, set_context
from labelloop.db.models import AnnotationRound, ModelVersion, Push, RoundItem, Score, TrainingRun
from labelloop.projects import create_project
from tests.factories import png, small_export

pytestmark = pytest.mark.integration

TINY = {"epochs": 1, "batch_size": 2, "image_size": 64}


def _count(ctx: Context, model, *where) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_round_pipeline_on_real_worker(service_settings, start_worker, celery_app, tmp_path):
    from labelloop_workers import pipeline, stages
    from labelloop_workers.pipeline import round_pipeline

    ctx = Context(service_settings)
    set_context(ctx)
    with ctx.db.session() as s:
        create_project(s, "celery-e2e", "segmentation", ["RBC", "WBC", "Platelets"])
    export = small_export(tmp_path / "src", n=8)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(5):
        (pool / f"p{i}.png").write_bytes(png(seed=100 + i))
    worker = start_worker()
    sig = round_pipeline(
        "celery-e2e",
        budget=3,
        overrides=TINY,
        out_dir=str(tmp_path / "out"),
        sources=[{"path": str(export)}, {"path": str(pool)}],
    )
    state = sig.apply_async().get(timeout=600)
    assert state["ingests"][0]["annotations_new"] == 8
    assert state["ingests"][1]["unlabeled"] == 5
    mv_id = state["model_version_id"]
    assert _count(ctx, Score, Score.model_version_id == mv_id) == 5
    assert _count(ctx, RoundItem, RoundItem.round_id == state["round_id"]) == 3
    assert (Path(state["push_destination"]) / "tasks.json").is_file()
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, mv_id)
        assert mv.stage == "production" and "mean_dice" in mv.metrics["test"]
        assert s.get(TrainingRun, state["training_run_id"]).status == "succeeded"

    # Re-running the training task for the same dataset version and recipe is a no-op.
    again = stages.train.delay(
        {"project": "celery-e2e", "dataset_version_id": state["dataset_version_id"]}, overrides=TINY
    ).get(timeout=120)
    assert again["model_version_id"] == mv_id
    assert _count(ctx, ModelVersion, ModelVersion.project_id == mv.project_id) == 1
    assert _count(ctx, TrainingRun, TrainingRun.project_id == mv.project_id) == 1
    # ...and so is re-running select with the same parameters.
    sel = stages.select.delay({**state}, budget=3).get(timeout=60)
    assert sel["round_id"] == state["round_id"]
    assert _count(ctx, AnnotationRound, AnnotationRound.project_id == mv.project_id) == 1
    assert _count(ctx, Push, Push.round_id == state["round_id"]) == 1
    # The nightly pipeline (what beat sends) stops early: nothing new to learn from.
    fired = pipeline.trigger.delay("celery-e2e", trigger="beat").get(timeout=60)
    assert fired["created"]
    run = _wait_pipeline(ctx, fired["pipeline_run_id"])
    assert run["status"] == "stopped" and run["message"].startswith("no new annotations")
    assert run["trigger"] == "beat" and run["dataset_version_id"] == state["dataset_version_id"]
    assert _count(ctx, TrainingRun, TrainingRun.project_id == mv.project_id) == 1
    assert "succeeded" in worker.tail(200_000)


def _wait_pipeline(ctx: Context, run_id: int, timeout: float = 120) -> dict:
    from labelloop.pipelines.runs import run_info

    deadline = time.monotonic() + timeout
    while (run := run_info(ctx, run_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.3)
    return run


def test_large_pool_scores_as_a_chord_and_the_chain_goes_on(
    service_settings, start_worker, celery_app, tmp_path
):
    from celery import chain

    from labelloop.db.models import Embedding
    from labelloop_workers import stages
    from tests.factories import trained_project

    ctx = Context(service_settings)
    set_context(ctx)
    dv, mv = trained_project(ctx, "celery-chord", tmp_path, labelled=4, pool=7, pool_seed=200)
    # Two workers share the shards: 7 pool + 4 labelled images in shards of 3.
    start_worker(extra_env={"LABELLOOP_SCORE_SHARD_SIZE": "3"})
    start_worker(queues="cpu", extra_env={"LABELLOOP_SCORE_SHARD_SIZE": "3"})
    state = {"project": "celery-chord", "dataset_version_id": dv, "model_version_id": mv}
    methods = "entropy_mean"
    out = chain(stages.score.s(state, method=methods), stages.select.s(budget=3)).apply_async()
    result = out.get(timeout=300)
    assert result["score"]["shards"] == 4 and result["score"]["scored"] == 7
    assert _count(ctx, Score, Score.model_version_id == mv) == 7
    assert _count(ctx, Embedding, Embedding.model_version_id == mv) == 11
    assert _count(ctx, RoundItem, RoundItem.round_id == result["round_id"]) == 3


TINY_KINDS = {
    "detection": {
        "epochs": 2,
        "batch_size": 2,
        "image_size": 96,
        "neck_channels": 16,
        "head_channels": 16,
        "mosaic": 0.0,
    },
    "classification": {"epochs": 2, "batch_size": 4, "image_size": 32},
}


@pytest.mark.parametrize("task", ["detection", "classification"])
def test_every_model_kind_trains_through_the_worker(
    task, service_settings, start_worker, celery_app, tmp_path
):
    from labelloop.datasets.freeze import freeze
    from labelloop.ingest import ingest_path
    from labelloop_workers import stages
    from tests.factories import class_export

    ctx = Context(service_settings)
    set_context(ctx)
    name = f"celery-{task}"
    with ctx.db.session() as s:
        create_project(s, name, task, ["RBC", "WBC", "Platelets"])
    export = class_export if task == "classification" else small_export
    ingest_path(ctx, name, export(tmp_path / "src", n=9))
    dv = freeze(ctx, name).dataset_version_id
    start_worker(queues="gpu")
    state = {"project": name, "dataset_version_id": dv}
    out = stages.train.delay(state, overrides=TINY_KINDS[task]).get(timeout=600)
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, out["model_version_id"])
        assert mv.recipe["task"] == task and mv.stage == "production"
        assert mv.metrics["primary_metric"] == ("map50" if task == "detection" else "macro_f1")
        assert s.get(TrainingRun, out["training_run_id"]).status == "succeeded"


def test_a_candidate_that_loses_the_gate_never_scores_or_pushes_the_round(
    service_settings, start_worker, celery_app, tmp_path
):
    """A pipeline run trains a candidate that loses the promotion gate: the round is
    scored, selected and pushed with production, and the run says which model and why."""
    from labelloop.pipelines.dispatch import launch
    from labelloop.pipelines.runs import PipelineParams, request_pipeline
    from labelloop_workers.dispatch import CeleryDispatcher
    from tests.factories import TINY_RECIPE, trained_project

    ctx = Context(service_settings)
    set_context(ctx)
    _, prod = trained_project(ctx, "celery-gate", tmp_path, labelled=6, pool=5, pool_seed=300)
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, prod)
        assert mv.stage == "production"
        # Production's stored test Dice is the best there is: no candidate can beat it on
        # the same test split, so the gate keeps production.
        mv.metrics = {**mv.metrics, "test": {**mv.metrics["test"], "mean_dice": 1.0}}
        prod_name = mv.name
    start_worker()
    req = request_pipeline(
        ctx,
        "celery-gate",
        trigger="api",
        params=PipelineParams(
            budget=2, push_to="file", sync=False, recipe={**TINY_RECIPE, "seed": 7}
        ),
    )
    launch(ctx, CeleryDispatcher(service_settings), req)
    run = _wait_pipeline(ctx, req.run_id, timeout=600)
    assert run["status"] == "succeeded", run
    candidate = run["model_version_id"]
    assert candidate != prod
    assert run["round_model"]["id"] == prod and run["round_model"]["name"] == prod_name
    assert "was not promoted" in run["round_model"]["reason"]
    with ctx.db.session() as s:
        assert s.get(ModelVersion, candidate).stage == "candidate"
        rnd = s.get(AnnotationRound, run["state"]["round_id"])
        assert rnd.model_version_id == prod
        push = s.scalar(select(Push).where(Push.round_id == rnd.id))
    assert _count(ctx, Score, Score.model_version_id == candidate) == 0
    tasks = json.loads((Path(push.destination) / "tasks.json").read_text())
    versions = {p["model_version"] for t in tasks for p in t.get("predictions", [])}
    assert versions == {prod_name}
