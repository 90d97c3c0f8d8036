"""Annotators' work retrains the model, end to end: a real Label Studio server fires real
webhooks at a real `labelloop serve`; the burst starts one pipeline on a real worker,
which syncs the new annotations from Label Studio and trains a new model version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from label_studio_sdk.client import LabelStudio
from sqlalchemy import func, select

from labelloop.context import Context, set_context
from labelloop.db.models import DatasetVersion, ModelVersion, PipelineRun, Project, WebhookEvent
from labelloop.labelstudio.client import LabelStudioClient
from labelloop.labelstudio.push import PushTask, push_tasks
from labelloop.labelstudio.webhooks import ACTIONS, SECRET_HEADER
from labelloop.projects import create_project
from tests.factories import png, poly
from tests.integration.services import ApiServer, wait_for
from tests.support import REPO

pytestmark = [pytest.mark.integration, pytest.mark.labelstudio]

TOKEN = "wh-" + uuid.uuid4().hex
SECRET = "s-" + uuid.uuid4().hex
LABELS = ["RBC", "WBC", "Platelets"]
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="box" toName="image">'
    + "".join(f'<Label value="{lab}"/>' for lab in LABELS)
    + '</RectangleLabels><PolygonLabels name="poly" toName="image">'
    + "".join(f'<Label value="{lab}"/>' for lab in LABELS)
    + "</PolygonLabels></View>"
)


def _cli(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "labelloop.cli", *args, "--json"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def test_a_burst_of_annotations_in_label_studio_retrains_once(
    labelstudio, service_env, service_settings, start_worker, tmp_path
):
    env = {
        **service_env,
        "LABELLOOP_API_TOKENS": json.dumps({"ml": TOKEN}),
        "LABELLOOP_WEBHOOK_SECRET": SECRET,
        "LABELLOOP_LABELSTUDIO_URL": labelstudio.url,
        "LABELLOOP_LABELSTUDIO_TOKEN": labelstudio.token,
    }
    ctx = Context(service_settings)
    set_context(ctx)
    project = f"wh-{uuid.uuid4().hex[:6]}"
    with ctx.db.session() as s:
        create_project(s, project, "segmentation", LABELS)

    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    ls_project = ls.ensure_project(f"webhooks {project}", CONFIG)
    ids = push_tasks(
        ls,
        ls_project,
        [
            PushTask(key=f"k{i}", filename=f"smear_{i}.png", image_bytes=png(64, 48, seed=900 + i))
            for i in range(10)
        ],
    )
    tasks = [ids[f"k{i}"] for i in range(10)]

    api = ApiServer(env, tmp_path / "serve.log", TOKEN)
    try:
        api.wait_ready()
        start_worker("io,cpu,gpu", extra_env=env)
        reg = _cli(
            env, "webhooks", "register", "-p", project, "--ls-project", str(ls_project),
            "--url", api.url,
        )  # fmt: skip
        assert reg["created"] and reg["url"] == f"{api.url}/webhooks/labelstudio/{project}"
        again = _cli(
            env, "webhooks", "register", "-p", project, "--ls-project", str(ls_project),
            "--url", api.url,
        )  # fmt: skip
        assert not again["created"] and again["webhook_id"] == reg["webhook_id"]  # idempotent
        client = LabelStudio(base_url=labelstudio.url, api_key=labelstudio.token)
        (hook,) = [h for h in client.webhooks.list(project=str(ls_project))]
        assert hook.send_payload and sorted(hook.actions) == sorted(ACTIONS)
        assert hook.headers == {SECRET_HEADER: SECRET}

        recipe = tmp_path / "recipe.yaml"
        recipe.write_text("epochs: 1\nbatch_size: 2\nimage_size: 64\n")
        triggers = _cli(
            env, "project", "schedule", project, "--min-annotations", "5", "--debounce", "4",
            "--budget", "2", "--recipe", str(recipe),
        )  # fmt: skip
        assert triggers["min_annotations"] == 5 and triggers["recipe"]["epochs"] == 1

        # Annotators label eight images in a burst: eight ANNOTATION_CREATED webhooks.
        burst_started = time.monotonic()
        annotations = [
            client.annotations.create(
                task,
                result=[
                    # A segmentation project learns from regions, not boxes.
                    poly("RBC", [[10, 10], [35, 10], [35, 40], [10, 40]], rid=f"r{i}"),
                    poly("WBC", [[50, 40], [80, 40], [80, 70], [50, 70]], rid=f"w{i}"),
                    poly("Platelets", [[70, 70], [85, 70], [80, 85]], rid=f"p{i}"),
                ],
            ).id
            for i, task in enumerate(tasks[:8])
        ]
        burst_s = time.monotonic() - burst_started
        with ctx.db.session() as s:
            pid = s.scalar(select(Project.id).where(Project.name == project))
            events = s.scalars(select(WebhookEvent).where(WebhookEvent.project_id == pid)).all()
            assert [e.action for e in events] == ["ANNOTATION_CREATED"] * 8
            assert sorted(a for e in events for a in e.annotation_ids) == sorted(annotations)
            (run,) = s.scalars(select(PipelineRun).where(PipelineRun.project_id == pid)).all()
            assert run.trigger == "webhook" and {e.pipeline_run_id for e in events} == {run.id}

        def finished():
            with ctx.db.session() as s:
                r = s.get(PipelineRun, run.id)
                return r.status not in ("queued", "running") and r

        done = wait_for(finished, 300, "the webhook-triggered pipeline", every=0.5)
        assert done.status == "succeeded", (done.status, done.message)
        assert done.state["synced"]["labelstudio"][0]["annotations_new"] == 8
        with ctx.db.session() as s:
            (dv,) = s.scalars(select(DatasetVersion).where(DatasetVersion.project_id == pid))
            assert dv.stats["images"] == 8
            (mv,) = s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid))
            assert mv.dataset_version_id == dv.id and mv.stage == "production"
            assert s.scalar(select(func.count()).where(PipelineRun.project_id == pid)) == 1
        with api.client() as http:
            shown = http.get(f"/runs/{run.id}").json()
            assert shown["webhook_events"] == 8 and shown["model_version_id"] == mv.id

        # An edit and a deletion are recorded too; two events stay below the threshold.
        client.annotations.update(
            annotations[0], result=[poly("RBC", [[20, 10], [45, 10], [30, 40]])]
        )
        client.annotations.delete(annotations[1])
        with ctx.db.session() as s:
            later = s.execute(
                select(WebhookEvent.action, WebhookEvent.pipeline_run_id)
                .where(WebhookEvent.project_id == pid, WebhookEvent.id > events[-1].id)
                .order_by(WebhookEvent.id)
            ).all()
            assert later == [("ANNOTATION_UPDATED", None), ("ANNOTATIONS_DELETED", None)]
            assert s.scalar(select(func.count()).where(PipelineRun.project_id == pid)) == 1
    finally:
        api.stop()
    print(
        f"\n8 annotations in {burst_s:.1f} s -> 8 webhooks -> 1 pipeline -> model version "
        f"{mv.name} on dataset version {dv.number}"
    )
