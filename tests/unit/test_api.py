"""The REST API in process (FastAPI's TestClient), embedded: SQLite, the in-memory broker
(runs really are sent to it), and, where a test serves the app, the in-process worker."""

from __future__ import annotations

import hashlib
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from labelloop.api.app import create_app
from labelloop.db.models import PipelineRun, WebhookEvent
from labelloop.labelstudio.webhooks import SECRET_HEADER
from labelloop.pipelines.triggers import link_labelstudio, update_triggers
from labelloop.projects import create_project, get_project
from tests.factories import png, small_export

TOKENS = {"alice": "a" * 32, "bob": "b" * 32}
TINY = {"epochs": 1, "batch_size": 2, "image_size": 64}
ALICE = {"Authorization": f"Bearer {TOKENS['alice']}"}
BOB = {"Authorization": f"Bearer {TOKENS['bob']}"}


@pytest.fixture
def make_client(ctx, settings_factory):
    apps = []

    def make(**overrides) -> TestClient:
        settings = settings_factory(api_tokens=TOKENS, **overrides)
        app = create_app(settings)
        apps.append(app)
        app.state.dispatcher.app.control.purge()  # the in-memory queues are per process
        return TestClient(app)

    yield make
    for app in apps:
        app.state.dispatcher.app.control.purge()


@pytest.fixture
def project(ctx):
    with ctx.db.session() as s:
        create_project(s, "cells", "segmentation", ["RBC", "WBC", "Platelets"])
    return "cells"


def _queued(client: TestClient, queue: str = "io") -> list:
    """The messages waiting in the in-memory broker's queue (taken off it)."""
    app = client.app.state.dispatcher.app
    out = []
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue(queue)
        while True:
            try:
                msg = q.get(timeout=0.2)
            except q.Empty:
                break
            out.append(msg)
            msg.ack()
        q.close()
    return out


def test_openapi_documents_tags_models_and_bearer_auth(make_client):
    doc = make_client().get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    ops = {(path, method): op for path, item in doc["paths"].items() for method, op in item.items()}
    expected = {
        ("/projects/{project}/runs", "post"): "runs",
        ("/projects/{project}/runs", "get"): "runs",
        ("/runs/{run_id}", "get"): "runs",
        ("/runs/{run_id}/cancel", "post"): "runs",
        ("/projects", "get"): "projects",
        ("/projects/{project}/dataset-versions", "get"): "projects",
        ("/projects/{project}/model-versions", "get"): "projects",
        ("/projects/{project}/rounds", "get"): "projects",
        ("/model-versions/{model_version_id}/artifact", "get"): "model versions",
        ("/model-versions/{model_version_id}/promote", "post"): "model versions",
        ("/webhooks/labelstudio/{project}", "post"): "webhooks",
        ("/health", "get"): "health",
    }
    for key, tag in expected.items():
        assert ops[key]["tags"] == [tag], key
        assert ops[key]["summary"] and ops[key].get("description"), key
    run_schema = ops[("/runs/{run_id}", "get")]["responses"]["200"]["content"]
    assert run_schema["application/json"]["schema"]["$ref"].endswith("/RunOut")
    assert ops[("/runs/{run_id}", "get")]["security"] == [{"HTTPBearer": []}]
    assert "security" not in ops[("/health", "get")]


def test_requests_without_a_valid_token_get_401(make_client, project):
    client = make_client()
    assert client.get("/health").json()["status"] == "ok"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YTpi"}):
        r = client.get("/projects", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["detail"]
    r = client.post("/projects/cells/runs", headers={"Authorization": "Bearer " + "a" * 31})
    assert r.status_code == 401
    assert client.get("/projects", headers=ALICE).json()[0]["name"] == "cells"


def test_trigger_is_queued_then_coalesced_then_cancelled(make_client, project):
    client = make_client()
    first = client.post("/projects/cells/runs", json={"recipe": TINY, "budget": 3}, headers=ALICE)
    assert first.status_code == 202, first.text
    run = first.json()["run"]
    assert not first.json()["coalesced"]
    assert (run["status"], run["trigger"], run["requested_by"]) == ("queued", "api", "alice")
    assert run["params"]["recipe"] == TINY and run["params"]["budget"] == 3
    (msg,) = _queued(client)  # really handed to the broker, under the recorded task id
    assert msg.headers["task"] == "labelloop.pipeline" and msg.headers["id"] == run["task_id"]
    assert msg.decode()[0] == [{"pipeline_run_id": run["id"]}]

    second = client.post("/projects/cells/runs", headers=BOB)
    assert second.status_code == 200 and second.json()["coalesced"]
    assert second.json()["run"]["coalesced_into"] == run["id"]
    assert second.json()["run"]["requested_by"] == "bob"
    assert _queued(client) == []  # nothing sent for a coalesced trigger
    listed = client.get("/projects/cells/runs", headers=ALICE).json()
    assert [r["status"] for r in listed] == ["coalesced", "queued"]

    cancelled = client.post(f"/runs/{run['id']}/cancel", json={"reason": "typo"}, headers=ALICE)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["message"] == "typo"
    again = client.post(f"/runs/{run['id']}/cancel", headers=ALICE)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert client.get("/runs/999", headers=ALICE).json() == {
        "detail": "no pipeline run with id 999"
    }
    assert client.post("/projects/cells/runs", headers=ALICE).status_code == 202


def test_bad_input_gets_a_4xx_with_detail_and_writes_nothing(ctx, make_client, project):
    client = make_client()
    r = client.post("/projects/cells/runs", json={"recipe": {"epochs": -1}}, headers=ALICE)
    assert r.status_code == 422 and "epochs" in r.json()["detail"]
    r = client.post("/projects/cells/runs", json={"colour": "red"}, headers=ALICE)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]
    r = client.post("/projects/cells/runs", json={"push_to": "fax"}, headers=ALICE)
    assert r.status_code == 422 and "push_to" in r.json()["detail"]
    r = client.post("/projects/nope/runs", headers=ALICE)
    assert r.status_code == 404 and "no project named 'nope'" in r.json()["detail"]
    assert client.get("/projects/nope/model-versions", headers=ALICE).status_code == 404
    r = client.post("/model-versions/5/promote", json={"reason": ""}, headers=ALICE)
    assert r.status_code == 422
    assert client.get("/model-versions/5/artifact", headers=ALICE).status_code == 404
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PipelineRun)) == 0


def _annotation_event(ann_id: int) -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": ann_id, "task": ann_id, "project": 3, "result": []},
        "task": {"id": ann_id},
        "project": {"id": 3},
    }


def test_webhooks_need_the_secret_and_a_readable_event(ctx, make_client, project):
    with ctx.db.session() as s:
        p = get_project(s, project)
        link_labelstudio(p, "http://ls:8080", 3)
        update_triggers(p, {"min_annotations": 3, "debounce_s": 5})
    url = "/webhooks/labelstudio/cells"
    off = make_client()
    assert off.post(url, json=_annotation_event(1)).status_code == 503
    client = make_client(webhook_secret="s3cret")
    assert client.post(url, json=_annotation_event(1)).status_code == 401
    wrong = client.post(url, json=_annotation_event(1), headers={SECRET_HEADER: "s3cre"})
    assert wrong.status_code == 401
    ok = {SECRET_HEADER: "s3cret"}
    ignored = client.post(url, json={"action": "PROJECT_UPDATED"}, headers=ok)
    assert ignored.status_code == 202 and ignored.json()["status"] == "ignored"
    bad = client.post(url, json={"action": "ANNOTATION_CREATED"}, headers=ok)
    assert bad.status_code == 422 and "with its payload" in bad.json()["detail"]
    assert (
        client.post("/webhooks/labelstudio/nope", json=_annotation_event(1), headers=ok).status_code
        == 404
    )
    outcomes = [client.post(url, json=_annotation_event(i), headers=ok).json() for i in range(5)]
    assert [o["status"] for o in outcomes] == [
        "pending",
        "pending",
        "triggered",
        "joined",
        "joined",
    ]
    run_id = outcomes[2]["pipeline_run_id"]
    (msg,) = _queued(client)
    assert msg.headers["task"] == "labelloop.pipeline" and msg.headers["eta"]  # debounced
    run = client.get(f"/runs/{run_id}", headers=ALICE).json()
    assert (run["trigger"], run["requested_by"], run["webhook_events"]) == (
        "webhook",
        "labelstudio",
        5,
    )
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(WebhookEvent)) == 5


def test_a_webhook_and_a_backend_call_look_their_secret_up_once_at_most(
    ctx, make_client, project, monkeypatch
):
    """The check made before the body is read serves the route: one lookup per request at
    most (each is a query, and a hundred webhooks a second made the repeats queue), a
    wrong secret is still refused by the first, and a secret that just let a request in
    needs none."""
    import labelloop.labelstudio.webhooks as hooks

    with ctx.db.session() as s:
        link_labelstudio(get_project(s, project), "http://ls:8080", 3)
    calls: list[str] = []
    real = hooks.check_webhook_secret

    def counted(ctx, project, given):
        calls.append(project)
        return real(ctx, project, given)

    monkeypatch.setattr(hooks, "check_webhook_secret", counted)
    client = make_client(webhook_secret="s3cret")
    url = "/webhooks/labelstudio/cells"
    ok = client.post(url, json=_annotation_event(1), headers={SECRET_HEADER: "s3cret"})
    assert ok.status_code == 202 and calls == ["cells"]
    calls.clear()
    assert (
        client.post(url, json=_annotation_event(2), headers={SECRET_HEADER: "x"}).status_code == 401
    )
    assert calls == ["cells"]
    calls.clear()
    # The secret let a webhook in a moment ago: the ML backend's call needs no lookup.
    setup = client.post("/ml/cells/setup", json={}, auth=("labelloop", "s3cret"))
    assert setup.status_code not in (401, 403, 500) and calls == []


def test_serving_embedded_runs_a_triggered_pipeline_and_serves_its_model(
    ctx, make_client, project, tmp_path
):
    from labelloop.ingest import ingest_path

    ingest_path(ctx, project, small_export(tmp_path / "src", n=6))
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        (pool / f"p{i}.png").write_bytes(png(seed=50 + i))
    ingest_path(ctx, project, pool)
    with make_client() as client:  # the lifespan starts the in-process worker
        r = client.post("/projects/cells/runs", json={"recipe": TINY, "budget": 2}, headers=ALICE)
        run_id = r.json()["run"]["id"]
        deadline = time.monotonic() + 300
        while (run := client.get(f"/runs/{run_id}", headers=ALICE).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, run
            time.sleep(0.5)
        assert run["status"] == "succeeded", run
        assert run["training"]["status"] == "succeeded"
        assert run["training"]["progress"]["epoch"] == 1
        assert run["state"]["round_id"] and run["state"]["push_id"]

        (mv,) = client.get("/projects/cells/model-versions", headers=ALICE).json()
        assert mv["id"] == run["model_version_id"] and mv["stage"] == "production"
        assert "mean_dice" in mv["metrics"] and mv["dataset_version"] == 1
        (dv,) = client.get("/projects/cells/dataset-versions", headers=ALICE).json()
        assert dv["images"] == 6
        (rnd,) = client.get("/projects/cells/rounds", headers=ALICE).json()
        assert rnd["size"] == 2 and rnd["pushes"][0]["target"] == "file"

        art = client.get(f"/model-versions/{mv['id']}/artifact", headers=ALICE)
        assert art.status_code == 200
        assert art.headers["x-labelloop-sha256"] == mv["sha256"]
        assert hashlib.sha256(art.content).hexdigest() == mv["sha256"]
        assert art.headers["content-length"] == str(len(art.content))

        promoted = client.post(
            f"/model-versions/{mv['id']}/promote", json={"reason": "reviewed"}, headers=BOB
        ).json()
        assert promoted["stage"] == "production"  # it already was: nothing recorded twice

        # Nothing changed since: the next run stops early and says why.
        again = client.post("/projects/cells/runs", json={"recipe": TINY}, headers=ALICE)
        again_id = again.json()["run"]["id"]
        while (run := client.get(f"/runs/{again_id}", headers=ALICE).json())["status"] in (
            "queued",
            "running",
        ):
            time.sleep(0.3)
        assert run["status"] == "stopped" and "no new annotations" in run["message"]
