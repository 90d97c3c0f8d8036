"""The model registry as an ML engineer uses it: versions, the promotion gate, forced
promotion with a reason, resumable runs through the blob store, and `labelloop count`."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from labelloop.cli.main import app
from labelloop.config import Settings
from labelloop.context import Context
from labelloop.datasets.freeze import freeze, load_manifest
from labelloop.db.models import ModelVersion, Promotion, TrainingRun
from labelloop.errors import ConfigError
from labelloop.imaging import decode_image
from labelloop.ingest import ingest_path
from labelloop.objects import count_intervals
from labelloop.projects import create_project
from labelloop.registry import load_model_version
from labelloop.runs import execute_run, request_run
from labelloop.training.recipe import parse_recipe
from tests.factories import png, small_export

TINY = {"epochs": 1, "batch_size": 2, "image_size": 64}
runner = CliRunner()


@pytest.fixture(autouse=True)
def cli_env(ctx, monkeypatch):
    """The CLI builds its own settings from the environment: point them at `ctx`."""
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(ctx.settings.data_dir))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def project(ctx, tmp_path):
    with ctx.db.session() as s:
        create_project(s, "reg", "segmentation", ["RBC", "WBC", "Platelets"])
    src = small_export(tmp_path / "src", n=6)
    ingest_path(ctx, "reg", src)
    return freeze(ctx, "reg").dataset_version_id, src


def test_second_model_is_compared_on_the_same_split_and_forced_with_a_reason(ctx, project):
    dv, _ = project
    first = execute_run(ctx, request_run(ctx, dv, overrides=TINY).run_id)
    second = execute_run(ctx, request_run(ctx, dv, overrides={**TINY, "seed": 1}).run_id)
    with ctx.db.session() as s:
        a, b = s.get(ModelVersion, first), s.get(ModelVersion, second)
        cmp = b.metrics["comparison"]
        # Both numbers were measured on the candidate's frozen test split.
        assert cmp["production_id"] == first and cmp["dataset_version_id"] == dv
        assert cmp["production"] == pytest.approx(a.metrics["test"]["mean_dice"], abs=1e-6)
        promoted = cmp["candidate"] > cmp["production"]
        assert (a.stage, b.stage) == (
            ("archived", "production") if promoted else ("production", "candidate")
        )

    r = runner.invoke(app, ["models", "--project", "reg", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [m["id"] for m in rows] == [first, second]
    assert all(m["metric"] == "mean_dice" and len(m["sha256"]) == 64 for m in rows)
    assert rows[0]["recipe_hash"] != rows[1]["recipe_hash"]

    loser = first if promoted else second
    with ctx.db.session() as s:
        name = s.get(ModelVersion, loser).name
    r = runner.invoke(app, ["promote", name, "--reason", "better on the new stain", "--json"])
    assert r.exit_code == 0, r.output
    with ctx.db.session() as s:
        assert s.get(ModelVersion, loser).stage == "production"
        assert s.get(ModelVersion, second if loser == first else first).stage == "archived"
        last = s.query(Promotion).order_by(Promotion.id.desc()).first()
        assert last.forced and last.reason == "better on the new stain"
    r = runner.invoke(app, ["promote", name, "--reason", "  "])
    assert r.exit_code == 2 and "--reason" in r.output


def test_a_recipe_for_another_task_is_refused(ctx, project):
    dv, _ = project
    with pytest.raises(ConfigError, match="anchors: Extra inputs are not permitted"):
        request_run(ctx, dv, parse_recipe({"task": "segmentation", "anchors": 3}))
    with pytest.raises(
        ConfigError, match="is for task 'detection' but the project is 'segmentation'"
    ):
        parse_recipe({"task": "detection"}, task="segmentation")


def test_a_run_resumes_from_the_checkpoint_in_the_blob_store(ctx, project, tmp_path):
    dv, _ = project
    req = request_run(ctx, dv, overrides={**TINY, "epochs": 2})

    class Stop(Exception):
        pass

    def stop_after_first_epoch(p: dict) -> None:
        if p.get("final") and p.get("epoch") == 1:
            raise Stop

    with pytest.raises(Stop):
        execute_run(ctx, req.run_id, on_progress=stop_after_first_epoch)
    with ctx.db.session() as s:
        run = s.get(TrainingRun, req.run_id)
        key, status = run.checkpoint_key, run.status
    assert status == "failed" and key and ctx.blobs.exists(key)

    # Another host: same database and blob store, an empty work folder.
    other = Context(
        Settings(
            data_dir=tmp_path / "host2",
            database_url=ctx.settings.database_url,
            blob_url=ctx.settings.blob_url,
        )
    )
    mv = execute_run(other, req.run_id)
    with other.db.session() as s:
        metrics = s.get(ModelVersion, mv).metrics
        run = s.get(TrainingRun, req.run_id)
        assert run.checkpoint_key is None and run.attempts == 2
    assert metrics["resumed"] is True and metrics["epochs"] == 2
    assert not ctx.blobs.exists(key)  # the finished run's resume point is cleaned up


def test_count_writes_overlays_and_compares_with_labels(ctx, project, tmp_path):
    from labelloop.counting.overlay import legend_height

    dv, src = project
    # A semantic model: the report must say that touching cells merge. Its RBC intervals
    # get a margin set by hand (validation is too small here to choose one).
    margin = {"count_interval_margin": {"RBC": 3.0}}
    overrides = {**TINY, "mode": "multiclass", **margin}
    mv = execute_run(ctx, request_run(ctx, dv, overrides=overrides).run_id)
    loaded = load_model_version(ctx, mv)
    assert loaded.kind.task == "segmentation"
    # One training and one validation image, and every test image: only those are held out.
    split_of = {it["sha256"]: it["split"] for it in load_manifest(ctx, dv)["items"]}
    by_split: dict[str, list[Path]] = {}
    for p in sorted((src.parent / "images").glob("*.png")):
        by_split.setdefault(split_of[hashlib.sha256(p.read_bytes()).hexdigest()], []).append(p)
    assert set(by_split) == {"train", "val", "test"}
    tests = by_split["test"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in (by_split["train"][0], by_split["val"][0], *tests):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "new.png").write_bytes(png(seed=99))
    with ctx.db.session() as s:
        name = s.get(ModelVersion, mv).name
    out = tmp_path / "out"
    r = runner.invoke(app, ["count", str(folder), "--model", name, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert len(report["images"]) == 3 + len(tests)
    with_truth = [im for im in report["images"] if im["truth"] is not None]
    assert sorted(im["split"] for im in with_truth) == sorted(
        ["train", "val"] + ["test"] * len(tests)
    )
    # The factory's annotation: an RBC box, a WBC box and a Platelets polygon, each one
    # annotated object (boxes count where no outline of their label covers them).
    assert with_truth[0]["truth"] == {"RBC": 1, "WBC": 1, "Platelets": 1}
    assert set(report["accuracy"]) == {"RBC", "WBC", "Platelets"}
    # The figures rest on the test images alone: the model trained on one of the others
    # and chose its margins on the other.
    rbc = report["accuracy"]["RBC"]
    assert rbc["true"] == rbc["images"] == len(tests)
    assert report["compared"] == {"images": len(tests), "held_out": True, "left_out_seen": 2}
    assert not any("optimistic" in w for w in report["warnings"])
    # The tiny model is semantic (multiclass): the report says touching cells merge.
    assert any("touching cells" in w for w in report["warnings"])
    # Every image holds one object of each class, so the constant (the training images'
    # median, stored with the evaluation) is 1 and exact: no model beats it, and the
    # report says its counts are not shown to follow the images.
    with ctx.db.session() as s:
        stored = s.get(ModelVersion, mv).metrics["test"]
    assert stored["count_constant"] == {"RBC": 1.0, "WBC": 1.0, "Platelets": 1.0}
    # The evaluation measured how often the intervals held on the test split: the same
    # images and intervals as `count` compared, so the same share.
    assert stored["interval_images"] == len(tests)
    for lb, a in report["accuracy"].items():
        assert stored["per_class"][lb]["interval_coverage"] == a["interval_coverage"]
        assert stored["per_class"][lb]["interval_width"] > 0
    assert all(a["mae_constant"] == 0.0 for a in report["accuracy"].values())
    assert any("no closer to the annotations than a constant" in w for w in report["warnings"])
    for im in report["images"]:
        (ow, oh), (w, h) = Image.open(im["overlay"]).size, Image.open(im["file"]).size
        assert ow >= w and oh == h + legend_height(["RBC", "WBC", "Platelets"])  # under the legend
        for lb, iv in im["intervals"].items():
            assert iv["low"] <= iv["expected"] <= iv["high"]
            assert iv["expected"] <= im["counts"][lb]  # each object's p is at most 1
        # The stored margin (the report names it) widens the confidences' own interval by
        # 3 RBCs on each side.
        image = decode_image(Path(im["file"]).read_bytes())
        plain = count_intervals(loaded.predict([image])[0].shapes, loaded.labels)
        assert im["intervals"]["RBC"]["high"] == pytest.approx(plain["RBC"]["high"] + 3.0)
        assert im["intervals"]["WBC"] == plain["WBC"]
    assert report["interval_margin"] == {"RBC": 3.0}
    assert report["plot"] == str(out / "counts.png") and Image.open(out / "counts.png").size
    with open(out / "counts.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (3 + len(tests)) * 3
    assert set(rows[0]) == {"file", "class", "predicted", "low", "high", "true", "error", "split"}
    unknown = [r for r in rows if r["file"].endswith("new.png")]
    assert all(r["true"] == r["error"] == r["split"] == "" for r in unknown) and len(unknown) == 3
    assert json.loads((out / "counts.json").read_text())["model"] == name
    assert not [p for p in out.iterdir() if p.name.startswith(".count-")]

    # Only images the model trained or tuned on: they are compared, and the report says
    # the figures are optimistic.
    for p in folder.iterdir():
        if p.name in {t.name for t in tests} | {"new.png"}:
            p.unlink()
    r = runner.invoke(app, ["count", str(folder), "--model", name, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["compared"] == {"images": 2, "held_out": False, "left_out_seen": 0}
    assert report["accuracy"]["RBC"]["images"] == 2
    (warned,) = [w for w in report["warnings"] if "optimistic" in w]
    assert warned.startswith(f"all 2 annotated images counted were in {name}'s training")

    # Intervals that a large test split found too narrow: `count` passes that on.
    with ctx.db.session() as s:
        row = s.get(ModelVersion, mv)
        per_class = {**stored["per_class"], "RBC": {**stored["per_class"]["RBC"]}}
        per_class["RBC"]["interval_coverage"] = 0.5
        row.metrics = {
            **row.metrics,
            "test": {**stored, "per_class": per_class, "interval_images": 40},
        }
    r = runner.invoke(app, ["count", str(folder), "--model", name, "--out", str(out), "--json"])
    (warned,) = [w for w in json.loads(r.output)["warnings"] if "count intervals held" in w]
    assert "only RBC 50% of its 40 test images" in warned and "did not carry over" in warned


def test_count_with_a_broken_image_fails_cleanly(ctx, project, tmp_path):
    dv, _ = project
    mv = execute_run(ctx, request_run(ctx, dv, overrides=TINY).run_id)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(seed=1))
    (folder / "b.png").write_bytes(png(seed=2)[:60])  # truncated
    out = tmp_path / "out"
    r = runner.invoke(app, ["count", str(folder), "--model", str(mv), "--out", str(out)])
    assert r.exit_code == 2
    assert "b.png" in r.output
    assert not out.exists() or list(out.iterdir()) == []
    r = runner.invoke(app, ["count", str(tmp_path / "nope"), "--model", str(mv), "--out", str(out)])
    assert r.exit_code == 2 and "nope" in r.output


def test_production_is_re_evaluated_only_when_the_test_split_changed(ctx, project, tmp_path):
    dv, _ = project
    first = execute_run(ctx, request_run(ctx, dv, overrides=TINY).run_id)
    second = execute_run(ctx, request_run(ctx, dv, overrides={**TINY, "seed": 1}).run_id)
    with ctx.db.session() as s:
        cmp = s.get(ModelVersion, second).metrics["comparison"]
    assert cmp["production_measured"].startswith("stored")  # same dataset version

    # New images pinned to the test split: production must be measured there again.
    more = small_export(tmp_path / "more", n=3, seed=100)
    ingest_path(ctx, "reg", more, split="test", source="more")
    dv2 = freeze(ctx, "reg").dataset_version_id
    assert dv2 != dv
    third = execute_run(ctx, request_run(ctx, dv2, overrides={**TINY, "seed": 2}).run_id)
    with ctx.db.session() as s:
        cmp = s.get(ModelVersion, third).metrics["comparison"]
        prod = s.get(ModelVersion, cmp["production_id"])
    assert cmp["production_id"] in (first, second)
    assert cmp["production_measured"].startswith("evaluated")
    assert cmp["dataset_version_id"] == dv2 and prod.dataset_version_id == dv


def test_a_round_uses_production_unless_the_candidate_is_asked_for(ctx, project):
    from labelloop.errors import InputError
    from labelloop.registry import round_model

    dv, _ = project
    first = execute_run(ctx, request_run(ctx, dv, overrides=TINY).run_id)
    assert round_model(ctx, first).reason.startswith("production: ")
    with ctx.db.session() as s:  # production's Dice is unbeatable: the next one loses
        mv = s.get(ModelVersion, first)
        mv.metrics = {**mv.metrics, "test": {**mv.metrics["test"], "mean_dice": 1.0}}
    second = execute_run(ctx, request_run(ctx, dv, overrides={**TINY, "seed": 1}).run_id)
    chosen = round_model(ctx, second)
    assert chosen.id == first and "not promoted" in chosen.reason
    asked = round_model(ctx, second, "candidate")
    assert asked.id == second and asked.reason.startswith("requested")
    with pytest.raises(InputError, match="production, candidate"):
        round_model(ctx, second, "newest")


def test_count_says_when_instance_rules_rest_on_few_annotated_objects(ctx, project, tmp_path):
    from labelloop.counting.stage import thin_rule_basis
    from labelloop.objects import MIN_RULE_OBJECTS

    dv, src = project
    mv = execute_run(ctx, request_run(ctx, dv, overrides={**TINY, "mode": "instance"}).run_id)
    with ctx.db.session() as s:
        row = s.get(ModelVersion, mv)
        name, recorded = row.name, row.recipe["instance_rule_objects"]
    manifest = load_manifest(ctx, dv)
    split = {k: [it for it in manifest["items"] if it["split"] == k] for k in ("train", "val")}
    assert split["val"], "small sets always get a validation split"
    labels = ["RBC", "WBC", "Platelets"]
    kinds = ("box", "polygon", "mask", "point")
    # The factory draws one object of each label per image: validation holds too few, so
    # every training image joined each label's basis, and the version recorded the sum.
    held = len(split["val"]) + len(split["train"])
    assert held < MIN_RULE_OBJECTS and recorded == dict.fromkeys(labels, held)
    assert thin_rule_basis(manifest, labels, kinds, recorded) == dict.fromkeys(labels, held)
    image = sorted((src.parent / "images").glob("*.png"))[0]
    out = tmp_path / "out"
    r = runner.invoke(app, ["count", str(image), "--model", name, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    warned = [w for w in json.loads(r.output)["warnings"] if "few annotated objects" in w]
    assert len(warned) == 1 and name in warned[0] and "validation and training" in warned[0]
    assert all(f"{lb} {held}" in warned[0] for lb in labels)
    # `models` says it too, from what the version recorded.
    r = runner.invoke(app, ["models", "--project", "reg", "--json"])
    row = next(m for m in json.loads(r.output) if m["name"] == name)
    assert row["rule_objects"] == recorded
    for command in ("models", "status"):
        r = runner.invoke(app, [command, "--project", "reg"])
        assert r.exit_code == 0 and "few annotated objects" in r.output, (command, r.output)
    # A version trained before the basis was recorded: its validation split's objects.
    assert thin_rule_basis(manifest, labels, kinds) == dict.fromkeys(labels, len(split["val"]))
    # Enough objects of every label: nothing to say.
    assert thin_rule_basis(manifest, labels, kinds, dict.fromkeys(labels, MIN_RULE_OBJECTS)) == {}
    many = {**manifest, "items": manifest["items"] + split["val"] * MIN_RULE_OBJECTS}
    assert thin_rule_basis(many, labels, kinds) == {}
