"""labelloop as a Label Studio ML backend, in process: the protocol Label Studio speaks
(health, setup, predict, webhook), the production model, the per (model, image) cache."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from labelloop.api.app import create_app
from labelloop.db.models import Image, ModelVersion, PipelineRun
from labelloop.labelstudio import ml_backend
from labelloop.labelstudio.label_config import task_label_config
from tests.factories import trained_project

SECRET = "s" * 32
AUTH = {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{SECRET}".encode()).decode()}
CONFIG = task_label_config(["RBC", "WBC", "Platelets"], "segmentation")


@pytest.fixture
def served(ctx, settings_factory, tmp_path):
    _, mv = trained_project(ctx, "cells", tmp_path, labelled=6, pool=3, pool_seed=400)
    app = create_app(settings_factory(api_tokens={"a": "a" * 32}, webhook_secret=SECRET))
    app.state.dispatcher.app.control.purge()
    yield TestClient(app), mv
    app.state.dispatcher.app.control.purge()


def _tasks(ctx) -> list[dict]:
    with ctx.db.session() as s:
        shas = s.scalars(select(Image.sha256).order_by(Image.id)).all()
    return [
        {"id": 100 + i, "data": {"image": f"/data/upload/1/{sha[:8]}.png", "labelloop_key": sha}}
        for i, sha in enumerate(shas[-3:])
    ]


def test_health_setup_and_auth(served):
    client, _ = served
    assert client.get("/ml/cells/health").json()["status"] == "UP"
    assert client.get("/ml/nowhere/health").status_code == 404
    assert client.post("/ml/cells/setup", json={}).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"x:nope").decode()}
    assert client.post("/ml/cells/setup", json={}, headers=wrong).status_code == 401
    r = client.post("/ml/cells/setup", json={"project": "1.1700000000"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"].startswith("cells")


def test_predict_answers_every_task_with_the_production_model_and_caches(ctx, served):
    client, mv = served
    with ctx.db.session() as s:
        name = s.get(ModelVersion, mv).name
    tasks = _tasks(ctx)
    body = {"tasks": tasks, "label_config": CONFIG, "project": "1.1700000000", "params": {}}
    before = ml_backend._CACHE.hits
    r = client.post("/ml/cells/predict", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(tasks)
    for res in results:
        assert res["model_version"] == name and 0.0 <= res["score"] <= 1.0
        assert all(x["type"] == "brushlabels" and x["from_name"] == "brush" for x in res["result"])
    assert ml_backend._CACHE.hits == before
    again = client.post("/ml/cells/predict", json=body, headers=AUTH).json()["results"]
    assert again == results and ml_backend._CACHE.hits == before + len(tasks)
    # A candidate that loses the gate changes nothing: production still answers.
    from labelloop.runs import execute_run, request_run

    with ctx.db.session() as s:
        prod = s.get(ModelVersion, mv)
        prod.metrics = {**prod.metrics, "test": {**prod.metrics["test"], "mean_dice": 1.0}}
        dv = prod.dataset_version_id
    tiny = {"epochs": 1, "batch_size": 2, "image_size": 64, "seed": 3}
    loser = execute_run(ctx, request_run(ctx, dv, overrides=tiny).run_id)
    with ctx.db.session() as s:
        assert s.get(ModelVersion, loser).stage == "candidate"
    third = client.post("/ml/cells/predict", json=body, headers=AUTH).json()["results"]
    assert {res["model_version"] for res in third} == {name}


def test_without_a_production_model_predict_says_so(ctx, settings_factory):
    from labelloop.projects import create_project

    with ctx.db.session() as s:
        create_project(s, "empty", "segmentation", ["RBC"])
    app = create_app(settings_factory(api_tokens={"a": "a" * 32}, webhook_secret=SECRET))
    r = TestClient(app).post(
        "/ml/empty/predict", json={"tasks": [], "label_config": CONFIG}, headers=AUTH
    )
    assert r.status_code == 404 and "no production model" in r.json()["detail"]


def test_start_training_queues_a_pipeline_run(ctx, served):
    client, _ = served
    r = client.post("/ml/cells/webhook", json={"action": "PROJECT_UPDATED"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["status"] == "ignored"
    r = client.post(
        "/ml/cells/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}, headers=AUTH
    )
    assert r.status_code == 201 and r.json()["status"] == "queued"
    with ctx.db.session() as s:
        run = s.get(PipelineRun, r.json()["pipeline_run_id"])
        assert (run.trigger, run.requested_by, run.status) == ("webhook", "labelstudio", "queued")
