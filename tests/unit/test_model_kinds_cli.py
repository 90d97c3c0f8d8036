"""Detection and classification projects through the same commands as segmentation:
train from a recipe file, the registry, pool scoring, counting and push-back."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from labelloop.cli.main import app
from tests.factories import class_export, png, small_export

runner = CliRunner()

TINY = {
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
METRIC = {"detection": "map50", "classification": "macro_f1"}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str) -> dict | list:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("task", ["detection", "classification"])
def test_train_score_count_push(task, tmp_path):
    run("project", "create", "p", "--task", task, "--labels", "RBC,WBC,Platelets")
    export = class_export if task == "classification" else small_export
    run("ingest", str(export(tmp_path / "src", n=9)), "--project", "p")
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        (pool / f"u{i}.png").write_bytes(png(seed=40 + i))
    run("ingest", str(pool), "--project", "p")
    run("dataset", "freeze", "--project", "p")

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY[task]))
    out = run("train", "--project", "p", "--recipe", str(recipe))
    mv = out["model_version"]
    assert mv["stage"] == "production" and mv["primary_metric"] == METRIC[task]
    assert 0.0 <= mv["metrics"][METRIC[task]] <= 1.0
    if task == "detection":
        # Every factory image holds one box of each class: the constant a count must beat
        # is 1 per image, and it makes no error on the test split.
        assert mv["metrics"]["count_constant"] == {"RBC": 1.0, "WBC": 1.0, "Platelets": 1.0}
        assert {c["count_mae_constant"] for c in mv["metrics"]["per_class"].values()} == {0.0}
    models = run("models", "--project", "p")
    assert [m["task"] for m in models] == [task]

    scored = run("score", "--project", "p")
    assert scored["scored"] == 3
    sel = run("select", "--project", "p", "--budget", "2")
    assert len(sel["items"]) == 2
    pushed = run("push", "--project", "p", "--to", "file", "--out", str(tmp_path / "out"))
    assert pushed["tasks"] == 2

    counted = run("count", str(pool), "--model", mv["name"], "--out", str(tmp_path / "counts"))
    assert len(counted["images"]) == 3
    assert all(set(im["counts"]) == {"RBC", "WBC", "Platelets"} for im in counted["images"])


def test_a_recipe_for_the_wrong_task_is_exit_2(tmp_path):
    run("project", "create", "d", "--task", "detection", "--labels", "RBC,WBC,Platelets")
    run("ingest", str(small_export(tmp_path / "src", n=3)), "--project", "d")
    run("dataset", "freeze", "--project", "d")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: segmentation\nepochs: 1\n")
    r = runner.invoke(app, ["train", "--project", "d", "--recipe", str(recipe)])
    assert r.exit_code == 2 and "detection" in r.output
    recipe.write_text("epochs: 1\nanchors: 9\n")
    r = runner.invoke(app, ["train", "--project", "d", "--recipe", str(recipe)])
    assert r.exit_code == 2 and "anchors" in r.output
