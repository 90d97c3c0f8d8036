"""Ingest into a real (SQLite) database: idempotency, revisions, all-or-nothing errors."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from labelloop.datasets.freeze import freeze
from labelloop.db.models import Annotation, DatasetVersion, Image, SourceItem
from labelloop.errors import InputError
from labelloop.ingest import ingest_path
from labelloop.projects import create_project
from tests.factories import png, rect, small_export, task, write_export

LABELS = ["RBC", "WBC", "Platelets"]


@pytest.fixture
def project(ctx):
    with ctx.db.session() as s:
        create_project(s, "cells", "segmentation", LABELS)
    return "cells"


def _counts(ctx) -> dict[str, int]:
    with ctx.db.session() as s:
        return {
            m.__name__: s.scalar(select(func.count()).select_from(m))
            for m in (Image, SourceItem, Annotation, DatasetVersion)
        }


def test_ingest_counts_shapes_and_is_idempotent(ctx, project, tmp_path):
    export = small_export(tmp_path, n=3)
    first = ingest_path(ctx, project, export)
    assert first.format == "labelstudio"
    assert (first.records, first.images_new, first.annotations_new) == (3, 3, 3)
    assert first.shapes_per_class == {"RBC": 3, "WBC": 3, "Platelets": 3}
    before = _counts(ctx)
    second = ingest_path(ctx, project, export)
    assert (second.images_new, second.annotations_new, second.annotations_unchanged) == (0, 0, 3)
    assert _counts(ctx) == before


def test_edited_annotation_becomes_a_new_revision(ctx, project, tmp_path):
    images = {"images/a.png": png(seed=1)}
    write_export(tmp_path, [task(1, "images/a.png", [[rect("RBC", 1, 1, 5, 5)]])], images)
    ingest_path(ctx, project, tmp_path / "export.json")
    write_export(tmp_path, [task(1, "images/a.png", [[rect("RBC", 1, 1, 9, 9)]])], images)
    report = ingest_path(ctx, project, tmp_path / "export.json")
    assert report.annotations_new == 1
    with ctx.db.session() as s:
        states = sorted(s.scalars(select(Annotation.state)).all())
    assert states == ["active", "superseded"]


def test_bad_record_fails_whole_ingest_and_writes_nothing(ctx, project, tmp_path):
    images = {f"images/{i}.png": png(seed=i) for i in range(3)}
    tasks = [task(i + 1, f"images/{i}.png", [[rect("RBC", 1, 1, 5, 5)]]) for i in range(3)]
    tasks[2]["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["Neutrophil"]
    export = write_export(tmp_path, tasks, images)
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, export)
    msg = str(err.value)
    assert "export.json" in msg and "task 3" in msg and "'Neutrophil' is not in project" in msg
    assert _counts(ctx) == {"Image": 0, "SourceItem": 0, "Annotation": 0, "DatasetVersion": 0}


def test_skip_invalid_ingests_the_rest_and_reports(ctx, project, tmp_path):
    images = {f"images/{i}.png": png(seed=i) for i in range(3)}
    tasks = [task(i + 1, f"images/{i}.png", [[rect("RBC", 1, 1, 5, 5)]]) for i in range(3)]
    tasks[1]["data"]["image"] = "/data/local-files/?d=images/missing.png"
    export = write_export(tmp_path, tasks, images)
    report = ingest_path(ctx, project, export, skip_invalid=True)
    assert report.annotations_new == 2
    assert len(report.skipped) == 1
    assert "missing.png" in report.skipped[0].reason
    assert report.skipped[0].record.startswith("task 2")


def test_label_map_renames_source_labels(ctx, project, tmp_path):
    images = {"images/a.png": png()}
    export = write_export(tmp_path, [task(1, "images/a.png", [[rect("rbc", 1, 1, 5, 5)]])], images)
    report = ingest_path(ctx, project, export, label_map={"rbc": "RBC"})
    assert report.shapes_per_class == {"RBC": 1}


def test_truncated_export_is_a_clear_error(ctx, project, tmp_path):
    export = small_export(tmp_path, n=3)
    export.write_text(export.read_text()[:-200])
    with pytest.raises(InputError, match=r"export\.json"):
        ingest_path(ctx, project, export)
    assert _counts(ctx)["Annotation"] == 0


def test_image_folder_becomes_the_unlabeled_pool(ctx, project, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(4):
        (pool / f"{i}.png").write_bytes(png(seed=10 + i))
    (pool / "dup.png").write_bytes(png(seed=10))
    report = ingest_path(ctx, project, pool)
    assert (report.format, report.records, report.images_new, report.unlabeled) == (
        "images",
        5,
        4,
        5,
    )
    assert report.duplicate_images == 1


def test_path_escape_is_refused(ctx, project, tmp_path):
    (tmp_path / "secret.png").write_bytes(png())
    inner = tmp_path / "export"
    inner.mkdir()
    export = write_export(inner, [task(1, "../secret.png", [[rect("RBC", 1, 1, 5, 5)]])], {})
    with pytest.raises(InputError, match="task 1"):
        ingest_path(ctx, project, export)


def test_freeze_is_idempotent_and_versions_changes(ctx, project, tmp_path):
    ingest_path(ctx, project, small_export(tmp_path, n=6))
    first = freeze(ctx, project)
    again = freeze(ctx, project)
    assert first.created and not again.created
    assert again.dataset_version_id == first.dataset_version_id
    assert first.stats["images"] == 6
    assert first.stats["splits"].get("test", 0) >= 1 and first.stats["splits"].get("val", 0) >= 1
    images = {"images/new.png": png(seed=99)}
    more = json.loads((tmp_path / "export.json").read_text())
    more.append(task(50, "images/new.png", [[rect("WBC", 1, 1, 5, 5)]]))
    write_export(tmp_path, more, images)
    ingest_path(ctx, project, tmp_path / "export.json")
    second = freeze(ctx, project)
    assert second.created and second.number == 2
    with ctx.db.session() as s:
        assert (
            s.get(DatasetVersion, second.dataset_version_id).parent_id == first.dataset_version_id
        )


def test_freeze_without_labels_is_a_clear_error(ctx, project):
    with pytest.raises(InputError, match="no labelled images"):
        freeze(ctx, project)


def test_boxes_outside_the_image_are_clipped_or_refused(ctx, project, tmp_path):
    images = {"images/a.png": png(width=64, height=48)}
    sticking_out = rect("RBC", 90, 90, 20, 20)  # percent: x 57.6..70.4 px of 64
    export = write_export(tmp_path, [task(1, "images/a.png", [[sticking_out]])], images)
    report = ingest_path(ctx, project, export)
    assert report.annotations_new == 1
    assert report.warnings and "RBC box clipped" in report.warnings[0]
    with ctx.db.session() as s:
        box = s.scalars(select(Annotation)).one().shapes[0]
    assert box["x"] + box["w"] == pytest.approx(64) and box["y"] + box["h"] == pytest.approx(48)

    flat = rect("WBC", 10, 10, 0, 20)
    export = write_export(tmp_path, [task(2, "images/a.png", [[flat]])], images)
    with pytest.raises(InputError, match=r"task 2 / annotation 200: WBC box has zero size"):
        ingest_path(ctx, project, export)
    outside = rect("WBC", 120, 10, 10, 10)
    export = write_export(tmp_path, [task(3, "images/a.png", [[outside]])], images)
    with pytest.raises(InputError, match="WBC box lies outside the image"):
        ingest_path(ctx, project, export)
    # An ellipse of zero radius is a cell of no extent, as a zero-size box is.
    dot = {
        **rect("WBC", 10, 10, 5, 5, rid="e1"),
        "type": "ellipselabels",
        "value": {"x": 20, "y": 20, "radiusX": 0, "radiusY": 4, "ellipselabels": ["WBC"]},
    }
    export = write_export(tmp_path, [task(4, "images/a.png", [[dot]])], images)
    with pytest.raises(InputError, match=r"task 4 / annotation 400: WBC ellipse has a zero radius"):
        ingest_path(ctx, project, export)


def test_reverting_to_an_earlier_revision_makes_it_count_again(ctx, project, tmp_path):
    images = {"images/a.png": png(seed=1)}
    a, b = rect("RBC", 1, 1, 5, 5), rect("RBC", 1, 1, 9, 9)
    for box in (a, b, a):
        write_export(tmp_path, [task(1, "images/a.png", [[box]])], images)
        report = ingest_path(ctx, project, tmp_path / "export.json")
    assert report.annotations_restored == 1 and report.annotations_new == 0
    with ctx.db.session() as s:
        rows = s.scalars(select(Annotation).order_by(Annotation.id)).all()
        assert [r.state for r in rows] == ["active", "superseded"]
    cancelled = task(1, "images/a.png", [[a]], cancelled=True)
    write_export(tmp_path, [cancelled], images)
    ingest_path(ctx, project, tmp_path / "export.json")
    write_export(tmp_path, [task(1, "images/a.png", [[a]])], images)
    ingest_path(ctx, project, tmp_path / "export.json")
    with ctx.db.session() as s:
        states = [r.state for r in s.scalars(select(Annotation).order_by(Annotation.id))]
    assert states == ["active", "superseded", "superseded"]


def test_detects_exports_whose_first_task_is_large(ctx, project, tmp_path):
    images = {"images/a.png": png(seed=1)}
    boxes = [rect("RBC", i % 80, 1, 5, 5, rid=f"r{i}") for i in range(200)]
    big = task(1, "images/a.png", [boxes])
    big = {"annotations": big.pop("annotations"), **big}  # Label Studio's key order
    export = write_export(tmp_path, [big], images)
    assert export.read_text().index('"data"') > 20_000
    assert ingest_path(ctx, project, export).format == "labelstudio"


def _json_min_rows() -> list[dict]:
    """JSON-MIN as Label Studio writes it: one flat row per annotation."""
    box = {
        "x": 10,
        "y": 10,
        "width": 20,
        "height": 20,
        "rotation": 0,
        "rectanglelabels": ["RBC"],
        "original_width": 64,
        "original_height": 48,
    }
    pts = {
        "points": [[70, 70], [80, 70], [80, 85]],
        "polygonlabels": ["Platelets"],
        "original_width": 64,
        "original_height": 48,
    }
    return [
        {
            "image": f"/data/local-files/?d=images/img{i}.png",
            "id": i + 1,
            "box": [box],
            "poly": [pts],
            "annotator": "ann@lab",
            "annotation_id": 100 + i,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-02T00:00:00Z",
            "lead_time": 2.0,
        }
        for i in range(2)
    ]


def test_json_min_export_needs_and_uses_the_label_config(ctx, project, tmp_path):
    from labelloop.labelstudio.label_config import label_config_xml

    images = {f"images/img{i}.png": png(seed=i) for i in range(2)}
    export = write_export(tmp_path, _json_min_rows(), images)
    with pytest.raises(InputError, match=r"task 1: a JSON-MIN export needs the labeling config"):
        ingest_path(ctx, project, export)
    (tmp_path / "label_config.xml").write_text(label_config_xml(LABELS, ["box", "polygon"]))
    report = ingest_path(ctx, project, export)
    assert report.format == "labelstudio"
    assert report.shapes_per_class == {"RBC": 2, "Platelets": 2}
    assert ingest_path(ctx, project, export).annotations_new == 0


def test_skip_invalid_is_still_one_transaction(ctx, project, tmp_path):
    """Savepoints per record must not commit: a failure later in the ingest (here a
    reader bug, not an input error) leaves nothing behind."""
    from labelloop.db.models import Project
    from labelloop.ingest import ingest_records
    from labelloop.ingest.records import RecordAnnotation, SourceRecord

    def records():
        yield SourceRecord(
            source="s",
            external_id="1",
            uri="a.png",
            file="f",
            load=png,
            annotations=[RecordAnnotation("a", [])],
        )
        raise RuntimeError("reader bug")

    with pytest.raises(RuntimeError), ctx.db.session() as s:
        proj = s.scalars(select(Project)).one()
        ingest_records(s, ctx.blobs, proj, records(), skip_invalid=True)
    assert _counts(ctx) == {"Image": 0, "SourceItem": 0, "Annotation": 0, "DatasetVersion": 0}


def test_a_non_object_task_does_not_hide_the_rest(ctx, project, tmp_path):
    images = {f"images/{i}.png": png(seed=i) for i in range(3)}
    tasks = [task(i + 1, f"images/{i}.png", [[rect("RBC", 1, 1, 5, 5)]]) for i in range(3)]
    export = write_export(tmp_path, [tasks[0], 5, tasks[1], tasks[2]], images)
    with pytest.raises(InputError, match=r"task #1: task not a JSON object"):
        ingest_path(ctx, project, export)
    report = ingest_path(ctx, project, export, skip_invalid=True)
    assert report.annotations_new == 3 and len(report.skipped) == 1
    assert _counts(ctx)["Annotation"] == 3


def test_skipped_records_are_not_counted_as_written(ctx, project, tmp_path):
    images = {f"images/{i}.png": png(seed=i) for i in range(2)}
    tasks = [task(i + 1, f"images/{i}.png", [[rect("RBC", 1, 1, 5, 5)]]) for i in range(2)]
    tasks[1]["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["Nope"]
    report = ingest_path(ctx, project, write_export(tmp_path, tasks, images), skip_invalid=True)
    assert (report.images_new, report.annotations_new) == (1, 1)
    assert report.shapes_per_class == {"RBC": 1}
    assert _counts(ctx)["Image"] == 1


def test_labels_follow_a_task_to_its_replaced_image(ctx, project, tmp_path):
    from labelloop.scoring.stage import pool_image_ids

    write_export(
        tmp_path,
        [task(1, "images/a.png", [[rect("RBC", 1, 1, 5, 5)]])],
        {"images/a.png": png(seed=1)},
    )
    ingest_path(ctx, project, tmp_path / "export.json")
    write_export(
        tmp_path,
        [task(1, "images/a.png", [[rect("RBC", 1, 1, 5, 5)]])],
        {"images/a.png": png(seed=2)},
    )
    with pytest.raises(InputError, match="pass --edit"):
        ingest_path(ctx, project, tmp_path / "export.json")
    ingest_path(ctx, project, tmp_path / "export.json", edit=True)
    with ctx.db.session() as s:
        ann = s.scalars(select(Annotation)).one()
        item = s.scalars(select(SourceItem)).one()
        assert ann.image_id == item.image_id
        assert pool_image_ids(s, ann.project_id) == []


def _export_of(folder, seed: int, project_id: int | None):
    """Three labelled tasks with ids 1..3 whose pixels depend on `seed`."""
    folder.mkdir()
    images = {f"images/{i}.png": png(seed=seed + i) for i in range(3)}
    tasks = [task(i + 1, f"images/{i}.png", [[rect("RBC", 1, 1, 5, 5)]]) for i in range(3)]
    for t in tasks:
        t["project"] = project_id
    return write_export(folder, tasks, images)


def _active_images(ctx) -> set[int]:
    with ctx.db.session() as s:
        return set(s.scalars(select(Annotation.image_id).where(Annotation.state == "active")))


@pytest.mark.parametrize("project_id", [None, 1], ids=["no-project", "same-ls-project"])
def test_overlapping_task_ids_of_another_export_are_refused(ctx, project, tmp_path, project_id):
    """Two exports of different images whose task ids overlap (two Label Studio instances,
    or generated files): the second must not take over the first's records."""
    first = _export_of(tmp_path / "a", seed=10, project_id=project_id)
    second = _export_of(tmp_path / "b", seed=20, project_id=project_id)
    ingest_path(ctx, project, first)
    before, labelled = _counts(ctx), _active_images(ctx)
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, second)
    assert err.value.file == str(second) and err.value.record == "task 1"
    assert "images/0.png" in err.value.reason and "--source" in err.value.reason
    assert _counts(ctx) == before and _active_images(ctx) == labelled
    report = ingest_path(ctx, project, second, source="instance-b")
    assert (report.images_new, report.annotations_new) == (3, 3)
    assert _active_images(ctx) > labelled and len(_active_images(ctx)) == 6
