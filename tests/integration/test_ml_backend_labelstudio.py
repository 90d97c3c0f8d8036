"""labelloop as a real Label Studio's ML backend: `labelloop labelstudio connect` wires a
project to a real `labelloop serve`, and tasks labelloop never pushed get predictions
of the production model when Label Studio asks ("Retrieve predictions")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest
from label_studio_sdk.client import LabelStudio
from sqlalchemy import select

from labelloop.access import digest
from labelloop.context import Context, set_context
from labelloop.db.models import ModelVersion, Project
from labelloop.labelstudio.client import LabelStudioClient
from labelloop.labelstudio.convert import results_to_shapes
from labelloop.labelstudio.label_config import task_label_config
from labelloop.labelstudio.push import PushTask, push_tasks
from labelloop.labelstudio.webhooks import SECRET_HEADER
from tests.factories import png, trained_project
from tests.integration.services import ApiServer
from tests.support import REPO

pytestmark = [pytest.mark.integration, pytest.mark.labelstudio]

TOKEN = "ml-" + uuid.uuid4().hex
SECRET = "s-" + uuid.uuid4().hex
LABELS = ["RBC", "WBC", "Platelets"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labelloop.cli", *args, "--json"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_connected_label_studio_gets_production_predictions_for_any_task(
    labelstudio, service_env, service_settings, tmp_path
):
    ctx = Context(service_settings)
    set_context(ctx)
    project = f"mlb-{uuid.uuid4().hex[:6]}"
    _, mv = trained_project(ctx, project, tmp_path, labelled=6, pool=2, pool_seed=500)
    with ctx.db.session() as s:
        name = s.get(ModelVersion, mv).name
    env = {
        **service_env,
        "LABELLOOP_API_TOKENS": json.dumps({"ml": TOKEN}),
        "LABELLOOP_WEBHOOK_SECRET": SECRET,
        "LABELLOOP_LABELSTUDIO_URL": labelstudio.url,
        "LABELLOOP_LABELSTUDIO_TOKEN": labelstudio.token,
    }
    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    ls_project = ls.ensure_project(f"ml {project}", task_label_config(LABELS, "segmentation"))
    # Tasks labelloop never pushed: images uploaded by someone else, no predictions.
    ids = push_tasks(
        ls,
        ls_project,
        [
            PushTask(key=f"x{i}", filename=f"new_{i}.png", image_bytes=png(64, 48, seed=950 + i))
            for i in range(3)
        ],
    )
    client = LabelStudio(base_url=labelstudio.url, api_key=labelstudio.token)
    assert all(not client.predictions.list(task=t) for t in ids.values())

    api = ApiServer(env, tmp_path / "serve.log", TOKEN)
    try:
        api.wait_ready()
        args = ("labelstudio", "connect", "-p", project, "--ls-project", str(ls_project),
                "--url", api.url)  # fmt: skip
        bad = _cli({**env, "LABELLOOP_LABELSTUDIO_TOKEN": "not-a-token"}, *args)
        assert bad.returncode == 2 and "401" in bad.stderr, bad.stderr
        assert not client.ml.list(project=ls_project)  # nothing registered
        first = _cli(env, *args)
        assert first.returncode == 0, first.stderr + first.stdout
        out = json.loads(first.stdout)
        assert out["ml_backend"]["created"] and out["webhook"]["created"]
        assert out["ml_backend"]["url"] == f"{api.url}/ml/{project}"
        second = _cli(env, *args)
        assert second.returncode == 0, second.stderr + second.stdout
        again = json.loads(second.stdout)
        assert not again["ml_backend"]["created"] and not again["webhook"]["created"]
        (backend,) = client.ml.list(project=ls_project)
        assert backend.state == "CO", backend  # connected: /health and /setup answered

        # A secret of the project's own: the webhook and the ML backend both get it, the
        # project keeps its sha256, and the shared secret no longer opens the project.
        own = _cli(env, *args, "--project-secret")
        assert own.returncode == 0, own.stderr + own.stdout
        assert json.loads(own.stdout)["secret"] == "project"
        hook_url = f"{api.url}/webhooks/labelstudio/{project}"
        (hook,) = [h for h in client.webhooks.list(project=str(ls_project)) if h.url == hook_url]
        given = hook.headers[SECRET_HEADER]
        assert given != SECRET
        with ctx.db.session() as s:
            kept = s.scalar(select(Project.webhook_secret_sha256).where(Project.name == project))
        assert kept == digest(given)
        (backend,) = client.ml.list(project=ls_project)
        assert backend.state == "CO", backend  # /setup answered with the project's secret
        shared = ("labelstudio", SECRET)
        assert httpx.post(f"{api.url}/ml/{project}/setup", json={}, auth=shared).status_code == 401

        client.actions.create(
            id="retrieve_tasks_predictions",
            project=ls_project,
            selected_items={"all": False, "included": list(ids.values())},
        )
        for task_id in ids.values():
            (pred,) = client.predictions.list(task=task_id)
            assert pred.model_version == name and 0.0 <= pred.score <= 1.0
            shapes = results_to_shapes(pred.result, file="ls", record=str(task_id))
            assert all(s.kind == "mask" for s in shapes)
    finally:
        api.stop()
