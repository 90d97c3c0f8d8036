"""The REST API as deployed: `labelloop serve` (uvicorn) in its own process, a real
`celery worker`, Redis and PostgreSQL. Twenty concurrent retrain requests train once;
a cancelled training stops at its next progress report."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from labelloop.context import Context, set_context
from labelloop.db.models import ModelVersion, PipelineRun, Project, TrainingRun
from labelloop.ingest import ingest_path
from labelloop.projects import create_project
from tests.factories import png, small_export
from tests.integration.services import ApiServer, wait_for

pytestmark = pytest.mark.integration

TOKEN = "t-" + uuid.uuid4().hex
FINAL = ("succeeded", "stopped", "failed", "cancelled")


@pytest.fixture
def api_env(service_env) -> dict[str, str]:
    return {**service_env, "LABELLOOP_API_TOKENS": json.dumps({"ml": TOKEN})}


@pytest.fixture
def api(api_env, tmp_path):
    server = ApiServer(api_env, tmp_path / "serve.log", TOKEN)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _seed(ctx: Context, project: str, folder, labelled: int = 8, pool: int = 3) -> int:
    with ctx.db.session() as s:
        p, _ = create_project(s, project, "segmentation", ["RBC", "WBC", "Platelets"])
        pid = p.id
    ingest_path(ctx, project, small_export(folder / "src", n=labelled))
    (folder / "pool").mkdir()
    for i in range(pool):
        (folder / "pool" / f"p{i}.png").write_bytes(png(seed=700 + i))
    ingest_path(ctx, project, folder / "pool")
    return pid


def _wait_run(client: httpx.Client, run_id: int, timeout: float) -> dict:
    return wait_for(
        lambda: (r := client.get(f"/runs/{run_id}").json())["status"] in FINAL and r,
        timeout,
        f"run {run_id} to end",
        every=0.5,
    )


def test_twenty_concurrent_retrain_requests_train_once(
    api, api_env, service_settings, start_worker, tmp_path
):
    ctx = Context(service_settings)
    set_context(ctx)
    project = f"burst-{uuid.uuid4().hex[:6]}"
    pid = _seed(ctx, project, tmp_path)
    start_worker("io,cpu,gpu", extra_env=api_env)
    body = {"recipe": {"epochs": 2, "batch_size": 2, "image_size": 64}, "budget": 2}
    barrier = threading.Barrier(20)
    responses: list[httpx.Response] = []

    def trigger() -> None:
        with api.client() as client:
            barrier.wait()
            responses.append(client.post(f"/projects/{project}/runs", json=body))

    threads = [threading.Thread(target=trigger) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [202], [r.text for r in responses if r.status_code >= 300]
    (accepted,) = [r.json()["run"] for r in responses if r.status_code == 202]
    coalesced = [r.json() for r in responses if r.status_code == 200]
    assert all(c["coalesced"] and c["run"]["coalesced_into"] == accepted["id"] for c in coalesced)

    with api.client() as client:
        run = _wait_run(client, accepted["id"], 300)
        assert run["status"] == "succeeded", run
        assert run["training"]["status"] == "succeeded"
        assert run["training"]["progress"]["epoch"] == 2 and run["training"]["progress"]["loss"]
        assert run["requested_by"] == "ml"
        with ctx.db.session() as s:
            assert s.scalar(select(func.count()).where(TrainingRun.project_id == pid)) == 1
            assert s.scalar(select(func.count()).where(ModelVersion.project_id == pid)) == 1
            statuses = list(
                s.scalars(select(PipelineRun.status).where(PipelineRun.project_id == pid))
            )
        assert sorted(statuses) == ["coalesced"] * 19 + ["succeeded"]

        (mv,) = client.get(f"/projects/{project}/model-versions").json()
        assert mv["id"] == run["model_version_id"] and mv["metrics"]["mean_dice"] >= 0
        digest = hashlib.sha256()
        with client.stream("GET", f"/model-versions/{mv['id']}/artifact") as art:
            assert art.status_code == 200
            for chunk in art.iter_bytes():
                digest.update(chunk)
        assert art.headers["x-labelloop-sha256"] == mv["sha256"] == digest.hexdigest()
        assert client.get("/projects").status_code == 200
        assert httpx.get(f"{api.url}/projects").status_code == 401


def test_cancel_stops_a_training_at_its_next_progress_report(
    api, api_env, service_settings, start_worker, tmp_path
):
    ctx = Context(service_settings)
    set_context(ctx)
    project = f"cancel-{uuid.uuid4().hex[:6]}"
    _seed(ctx, project, tmp_path)
    worker = start_worker("io,cpu,gpu", extra_env=api_env)
    body = {"recipe": {"epochs": 60, "batch_size": 2, "image_size": 64}}
    with api.client() as client:
        run_id = client.post(f"/projects/{project}/runs", json=body).json()["run"]["id"]
        run = wait_for(
            lambda: (
                (r := client.get(f"/runs/{run_id}").json())["training"]
                and (r["training"]["progress"].get("epoch") or 0) >= 1
                and r
            ),
            240,
            "the training to report its first epoch",
            every=0.3,
        )
        assert run["stage"] == "train" and run["training"]["status"] == "running"
        asked = time.monotonic()
        cancelled = client.post(f"/runs/{run_id}/cancel", json={"reason": "wrong labels"})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert client.post(f"/runs/{run_id}/cancel").status_code == 409

        def stopped():
            with ctx.db.session() as s:
                tr = s.get(TrainingRun, run["training"]["id"])
                return tr.finished_at is not None and tr

        tr = wait_for(stopped, 120, "the trainer to stop")
        took = time.monotonic() - asked
        assert tr.status == "cancelled" and tr.error == "wrong labels"
        assert tr.checkpoint_epoch is not None and tr.checkpoint_epoch < 60  # kept to resume
        assert (tr.progress or {}).get("epoch", 0) < 60
        assert f"pipeline run {run_id}: training cancelled" in worker.tail(10**6)
        final = client.get(f"/runs/{run_id}").json()
        assert final["status"] == "cancelled" and final["message"] == "wrong labels"
        with ctx.db.session() as s:
            project_id = s.scalar(select(Project.id).where(Project.name == project))
            assert s.scalar(select(func.count()).where(ModelVersion.project_id == project_id)) == 0
        # The worker is free again: the next request runs (and stops early or trains).
        nxt = client.post(f"/projects/{project}/runs", json={"recipe": {"epochs": 1}})
        assert nxt.status_code == 202
        client.post(f"/runs/{nxt.json()['run']['id']}/cancel")
    print(f"\ncancelled at epoch {tr.progress.get('epoch')}: trainer stopped {took:.1f} s later")
