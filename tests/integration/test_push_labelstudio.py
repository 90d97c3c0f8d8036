"""`labelloop push --to labelstudio`: a real round lands in a real Label Studio server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from labelloop.cli.main import app
from labelloop.config import Settings
from labelloop.context import Context, set_context
from labelloop.datasets.freeze import freeze
from labelloop.db import migrate
from labelloop.ingest import ingest_path
from labelloop.labelstudio.client import LabelStudioClient
from labelloop.labelstudio.convert import results_to_shapes
from labelloop.projects import create_project
from labelloop.runs import execute_run, request_run
from labelloop.scoring.stage import score_pool
from labelloop.selection import select_round
from tests.factories import png, small_export, trained_project

pytestmark = [pytest.mark.integration, pytest.mark.labelstudio]


def test_cli_push_creates_tasks_with_predictions(labelstudio, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("LABELLOOP_LABELSTUDIO_URL", labelstudio.url)
    monkeypatch.setenv("LABELLOOP_LABELSTUDIO_TOKEN", labelstudio.token)
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings()
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    set_context(ctx)
    with ctx.db.session() as s:
        create_project(s, "ls-push", "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, "ls-push", small_export(tmp_path / "src", n=6))
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(5):
        (pool / f"u{i}.png").write_bytes(png(seed=70 + i))
    ingest_path(ctx, "ls-push", pool)
    req = request_run(
        ctx,
        freeze(ctx, "ls-push").dataset_version_id,
        overrides={"epochs": 1, "batch_size": 2, "image_size": 64},
    )
    mv = execute_run(ctx, req.run_id)
    score_pool(ctx, mv)
    rnd = select_round(ctx, "ls-push", budget=3, model_version_id=mv, batch_size=2)

    runner = CliRunner()
    args = ["push", "--project", "ls-push", "--to", "labelstudio", "--ls-title", "smears", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["tasks"] == 3 and out["destination"].startswith(labelstudio.url)

    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    project_id = int(out["destination"].rsplit("/", 1)[1])
    tasks = ls.tasks(project_id)
    assert len(tasks) == 3
    by_image = {str(t["data"]["labelloop_image_id"]): t for t in tasks}
    assert set(by_image) == {str(i) for i, _, _ in rnd.items}
    for image_id, rank, score in rnd.items:
        task = by_image[str(image_id)]
        assert task["data"]["labelloop_round"] == rnd.number
        assert task["data"]["labelloop_batch"] == rnd.batches[image_id]
        assert task["data"]["rank"] == rank
        # Three digits: what an annotator reads; the rank keeps the exact order.
        assert task["data"]["uncertainty"] == round(score, 3)
        assert {k for k in task["data"] if k.startswith("pred_")} == {
            "pred_RBC",
            "pred_WBC",
            "pred_Platelets",
        }
        assert all(isinstance(task["data"][f"pred_{c}"], int) for c in ("RBC", "WBC"))
        assert str(task["id"]) == out["id_map"][str(image_id)]
        preds = ls.predictions(task["id"])
        assert len(preds) == 1
        assert preds[0]["model_version"] == out["model_version"]
        assert preds[0]["score"] == pytest.approx(1 - score, abs=1e-5)
        shapes = results_to_shapes(preds[0]["result"], file="ls", record=str(task["id"]))
        assert shapes and all(s.kind == "mask" for s in shapes)

    # The project shows this model's predictions; the round has a Data Manager tab (and
    # one per annotator batch) sorted by rank, with numeric columns and our fields hidden.
    assert ls.sdk.projects.get(project_id).model_version == out["model_version"]
    views = {v["data"]["title"]: v for v in ls.views(project_id)}
    title = f"Round {rnd.number}"
    assert {title, f"{title} · B1", f"{title} · B2"} <= set(views)
    tab = views[title]["data"]
    assert tab["ordering"] == ["tasks:data.rank"]
    assert tab["columnsDisplayType"]["tasks:data.uncertainty"] == "Number"
    assert tab["columnsDisplayType"]["tasks:data.pred_WBC"] == "Number"
    for hidden in (tab["hiddenColumns"]["explore"], tab["hiddenColumns"]["labeling"]):
        assert {"tasks:data.labelloop_key", "tasks:inner_id", "tasks:file_upload"} <= set(hidden)
        assert not {"tasks:predictions_score", "tasks:data.image", "tasks:data.rank"} & set(hidden)
    listed = list(ls.sdk.tasks.list(project=project_id, view=views[title]["id"], fields="all"))
    expected = [int(out["id_map"][str(i)]) for i, _, _ in rnd.items]  # rank order
    assert [t.id for t in listed] == expected
    # The columns a tab shows are computed by Label Studio without opening a task.
    row = listed[0].model_dump()
    assert row["predictions_score"] == pytest.approx(1 - rnd.items[0][2], abs=1e-5)
    assert out["model_version"] in str(row["predictions_model_versions"])
    batch2 = [
        t.id for t in ls.sdk.tasks.list(project=project_id, view=views[f"{title} · B2"]["id"])
    ]
    assert batch2 == [int(out["id_map"][str(i)]) for i, _, _ in rnd.items if rnd.batches[i] == 2]

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["id_map"] == out["id_map"]
    assert len(ls.tasks(project_id)) == 3
    assert all(len(ls.predictions(t["id"])) == 1 for t in ls.tasks(project_id))
    assert len(ls.views(project_id)) == len(views)  # tabs updated, not duplicated

    # Once the round is closed, the next round's push removes its tabs (and only those).
    from labelloop.db.models import AnnotationRound

    with ctx.db.session() as s:
        s.get(AnnotationRound, rnd.round_id).status = "done"
    nxt = select_round(ctx, "ls-push", budget=2, model_version_id=mv)
    assert runner.invoke(app, args).exit_code == 0
    titles = {v["data"]["title"] for v in ls.views(project_id)}
    assert f"Round {nxt.number}" in titles and not any(t.startswith(title) for t in titles)


def test_celery_round_to_labelstudio_is_idempotent(
    labelstudio, service_settings, start_worker, celery_app, tmp_path
):
    """score -> select -> push through a real worker into the real server, twice."""
    from celery import chain

    from labelloop_workers import stages as t

    ctx = Context(service_settings)
    set_context(ctx)
    dv, mv = trained_project(ctx, "ls-celery", tmp_path, labelled=5, pool=6, pool_seed=90)
    start_worker(
        extra_env={
            "LABELLOOP_LABELSTUDIO_URL": labelstudio.url,
            "LABELLOOP_LABELSTUDIO_TOKEN": labelstudio.token,
        }
    )
    state = {"project": "ls-celery", "dataset_version_id": dv, "model_version_id": mv}

    def round_trip() -> dict:
        sig = chain(
            t.score.s(state),
            t.select.s(budget=4, strategy="hybrid"),
            t.push.s(target="labelstudio", title="ls-celery round"),
        )
        return sig.apply_async().get(timeout=300)

    first = round_trip()
    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    project_id = int(first["push_destination"].rsplit("/", 1)[1])
    tasks = ls.tasks(project_id)
    assert len(tasks) == 4
    assert all(len(ls.predictions(task["id"])) == 1 for task in tasks)
    second = round_trip()
    assert second["round_id"] == first["round_id"]
    assert len(ls.tasks(project_id)) == 4
    assert all(len(ls.predictions(task["id"])) == 1 for task in ls.tasks(project_id))
    assert sum(v["data"]["title"].startswith("Round ") for v in ls.views(project_id)) == 1


def test_an_image_where_the_model_found_nothing_gets_an_empty_prediction(labelstudio, tmp_path):
    """'Found nothing' is a prediction (no regions, a model version and a score), not the
    absence of one, both in a new task and when a task is refreshed."""
    from labelloop.labelstudio.label_config import task_label_config
    from labelloop.labelstudio.push import PushTask, _prediction, push_tasks
    from labelloop.push.stage import TaskSpec

    spec = TaskSpec(1, "a" * 64, "k.png", 64, 48, rank=1, uncertainty=0.25, counts={})
    empty = _prediction(spec, [], "det-v3")
    assert empty == {"model_version": "det-v3", "score": 0.75, "result": []}
    unscored = TaskSpec(2, "b" * 64, "k.png", 64, 48, rank=2, uncertainty=None, counts={})
    assert _prediction(unscored, [], "det-v3") is None

    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    project = ls.ensure_project("found nothing", task_label_config(["RBC", "WBC"], "detection"))
    task = PushTask(key="nothing", filename="n.png", image_bytes=png(64, 48), prediction=empty)
    task_id = push_tasks(ls, project, [task])["nothing"]
    preds = ls.predictions(task_id)
    assert [(p["model_version"], p["score"], p["result"]) for p in preds] == [("det-v3", 0.75, [])]
    again = PushTask(key="nothing", filename="n.png", image_bytes=png(64, 48), prediction=empty)
    push_tasks(ls, project, [again])
    assert len(ls.predictions(task_id)) == 1
    assert ls.sdk.projects.get(project).model_version == "det-v3"


def test_a_promoted_model_refreshes_the_open_rounds(ctx, labelstudio, tmp_path):
    """Label Studio shows scores only for the project's current model version: when a new
    model is promoted, the open rounds' tasks get its predictions too."""
    from labelloop.db.models import ModelVersion
    from labelloop.labelstudio.push import refresh_open_rounds
    from labelloop.push.stage import push_round
    from labelloop.registry import promote

    _, first = trained_project(ctx, "refresh", tmp_path, labelled=6, pool=6, pool_seed=700)
    score_pool(ctx, first)
    old = select_round(ctx, "refresh", budget=2, model_version_id=first)
    kw = {"url": labelstudio.url, "token": labelstudio.token, "title": "refresh"}
    pushed = push_round(ctx, old.round_id, "labelstudio", **kw)
    with ctx.db.session() as s:
        dv = s.get(ModelVersion, first).dataset_version_id
    tiny = {"epochs": 1, "batch_size": 2, "image_size": 64, "seed": 5}
    second = execute_run(ctx, request_run(ctx, dv, overrides=tiny).run_id)
    promote(ctx, second, "test: the better model")
    score_pool(ctx, second)
    with ctx.db.session() as s:
        names = {mv: s.get(ModelVersion, mv).name for mv in (first, second)}

    assert refresh_open_rounds(ctx, "refresh", second, url=labelstudio.url,
                               token=labelstudio.token) == [old.number]  # fmt: skip
    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    project_id = int(pushed.destination.rsplit("/", 1)[1])
    assert ls.sdk.projects.get(project_id).model_version == names[second]
    for task_id in pushed.id_map.values():
        versions = sorted(p["model_version"] for p in ls.predictions(int(task_id)))
        assert versions == sorted(names.values())  # the old one kept beside the new
    # Idempotent: a second refresh replaces, never duplicates.
    refresh_open_rounds(ctx, "refresh", second, url=labelstudio.url, token=labelstudio.token)
    assert all(len(ls.predictions(int(t))) == 2 for t in pushed.id_map.values())
