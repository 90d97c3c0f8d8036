"""Every stage in order on SQLite with a tiny model: what reaches annotators is right."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from labelloop.datasets.freeze import freeze
from labelloop.errors import InputError
from labelloop.ingest import ingest_path
from labelloop.labelstudio.convert import results_to_shapes
from labelloop.labelstudio.label_config import parse_label_config
from labelloop.projects import create_project
from labelloop.push.stage import push_round
from labelloop.reports import project_status
from labelloop.runs import execute_run, request_run
from labelloop.scoring.stage import score_pool
from labelloop.selection import select_round
from tests.factories import png, small_export

TINY = {"epochs": 1, "batch_size": 2, "image_size": 64}


@pytest.fixture
def trained(ctx, tmp_path):
    with ctx.db.session() as s:
        create_project(s, "loop", "segmentation", ["RBC", "WBC", "Platelets"])
    ingest_path(ctx, "loop", small_export(tmp_path / "src", n=6))
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(6):
        (pool / f"u{i}.png").write_bytes(png(seed=50 + i))
    ingest_path(ctx, "loop", pool)
    dv = freeze(ctx, "loop").dataset_version_id
    req = request_run(ctx, dv, overrides=TINY)
    return execute_run(ctx, req.run_id)


def test_scores_select_and_push_file(ctx, trained, tmp_path):
    result = score_pool(ctx, trained)
    assert (result.scored, result.method) == (6, "entropy_mean")
    assert score_pool(ctx, trained).scored == 0  # stored: never scored twice

    # Ranked by uncertainty (named: a segmentation project's default is power).
    first = select_round(ctx, "loop", budget=4, strategy="uncertainty", model_version_id=trained)
    scores = [sc for _, _, sc in first.items]
    assert [r for _, r, _ in first.items] == [1, 2, 3, 4]
    assert scores == sorted(scores, reverse=True)
    # Images out with annotators in an open round are not selected again.
    second = select_round(
        ctx, "loop", budget=4, strategy="uncertainty", model_version_id=trained, seed=1
    )
    assert len(second.items) == 2
    assert not {i for i, _, _ in first.items} & {i for i, _, _ in second.items}
    with pytest.raises(InputError, match="budget must be at least 1"):
        select_round(ctx, "loop", budget=0)

    pushed = push_round(ctx, first.round_id, "file", out_dir=tmp_path / "out")
    folder = Path(pushed.destination)
    tasks = json.loads((folder / "tasks.json").read_text())
    assert len(tasks) == 4 and pushed.id_map
    config = parse_label_config((folder / "label_config.xml").read_text())
    # One control: each label once, with the brush (a segmentation project's default).
    assert [c.type.lower() for c in config.controls] == ["brushlabels"]
    for t in tasks:
        assert (folder / t["data"]["image"].split("?d=")[1]).is_file()
        pred = t["predictions"][0]
        assert pred["model_version"] == pushed.model_version
        assert 0.0 <= pred["score"] <= 1.0
        assert t["data"]["uncertainty"] == pytest.approx(1 - pred["score"], abs=5e-4)  # 3 digits
        shapes = results_to_shapes(pred["result"], file="tasks.json", record="t")
        assert all(s.kind == "mask" and s.label in {"RBC", "WBC", "Platelets"} for s in shapes)
    with open(folder / "tasks.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert {"count_RBC", "count_WBC", "count_Platelets"} <= set(rows[0])
    assert {t["data"]["labelloop_batch"] for t in tasks} == {1}

    # The same predictions as a CVAT 1.1 file, read back by the CVAT reader.
    from labelloop.cvat.reader import read_cvat_xml
    from labelloop.ingest.records import ReadOptions

    names = (folder / "cvat" / "images.txt").read_text().split()
    assert names == [t["data"]["image"].rsplit("/", 1)[1] for t in tasks]
    back = list(read_cvat_xml(folder / "cvat", ReadOptions(image_root=folder / "images")))
    assert [Path(r.uri).name for r in back] == names
    for rec, t in zip(back, tasks, strict=True):
        assert rec.error is None
        pred = results_to_shapes(t["predictions"][0]["result"], file="tasks.json", record="t")
        got = rec.annotations[0].shapes if rec.annotations else []
        assert sorted(s.label for s in got) == sorted(s.label for s in pred)

    # A project that draws polygons gets a polygon tool and its predictions as polygons.
    from labelloop.projects import get_project, set_draw

    with ctx.db.session() as s:
        set_draw(get_project(s, "loop"), "polygon")
        with pytest.raises(InputError, match="draws mask or polygon, not 'box'"):
            set_draw(get_project(s, "loop"), "box")
    again = Path(push_round(ctx, first.round_id, "file", out_dir=tmp_path / "poly").destination)
    config = parse_label_config((again / "label_config.xml").read_text())
    assert [c.type.lower() for c in config.controls] == ["polygonlabels"]
    masks = sum(len(t["predictions"][0]["result"]) for t in tasks)
    polys = []
    for t in json.loads((again / "tasks.json").read_text()):
        for pred in t.get("predictions", []):
            polys += results_to_shapes(pred["result"], file="tasks.json", record="t")
    assert masks and polys and {s.kind for s in polys} == {"polygon"}

    st = project_status(ctx, "loop")
    assert st["images"] == {"total": 12, "labelled": 6, "unlabeled": 6}
    assert st["model_versions"][0]["stage"] == "production"
    assert [r["size"] for r in st["rounds"]] == [4, 2]
    assert st["rounds"][0]["pushes"][0]["tasks"] == 4
    assert st["rounds"][0]["progress"] == {
        "images": 4,
        "sent": 4,
        "annotated": 0,
        "skipped": 0,
        "left": 4,
    }
    assert st["rounds"][1]["progress"]["sent"] == 0


def test_training_is_idempotent_per_dataset_and_recipe(ctx, trained):
    from labelloop.db.models import DatasetVersion, ModelVersion

    with ctx.db.session() as s:
        dv = s.query(DatasetVersion).one().id
    again = request_run(ctx, dv, overrides=TINY)
    assert again.model_version_id == trained and not again.created
    assert execute_run(ctx, again.run_id) == trained
    with ctx.db.session() as s:
        assert s.query(ModelVersion).count() == 1


def test_a_finished_round_is_not_handed_out_again(ctx, trained):
    from labelloop.db.models import AnnotationRound

    score_pool(ctx, trained)
    first = select_round(ctx, "loop", budget=6, strategy="random", seed=3)
    assert len(first.items) == 6
    with pytest.raises(InputError, match="nothing to select"):
        select_round(ctx, "loop", budget=2, strategy="random", seed=4)
    with ctx.db.session() as s:  # annotators are done with it (as if labelled)
        s.get(AnnotationRound, first.round_id).status = "done"
    again = select_round(ctx, "loop", budget=6, strategy="random", seed=3)
    assert again.created and again.round_id != first.round_id


def test_push_to_cvat_says_what_it_needs(ctx, trained, monkeypatch):
    from labelloop.errors import ConfigError

    score_pool(ctx, trained)
    rnd = select_round(ctx, "loop", budget=2, model_version_id=trained)
    with pytest.raises(ConfigError, match="LABELLOOP_CVAT_URL"):
        push_round(ctx, rnd.round_id, "cvat")
    with pytest.raises(ConfigError, match="choose one of: file, labelstudio, cvat"):
        push_round(ctx, rnd.round_id, "dropbox")
