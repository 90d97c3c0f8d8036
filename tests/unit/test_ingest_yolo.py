"""YOLO txt ingest end to end: Label Studio's converter samples, the Ultralytics and CVAT
layouts, segmentation polygons, and broken label files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelloop.errors import InputError
from labelloop.ingest import ingest_path
from labelloop.ingest.formats import detect_format
from tests.factories import png
from tests.support import require_shared_data
from tests.unit.ingest_fixtures import (
    NOTHING,
    active_shapes,
    item_meta,
    make_project,
    mutated,
    read_all,
    row_counts,
)

DOORS = ["closed_door", "opened_door", "bus", "number"]
CELLS = ["RBC", "WBC", "Platelets"]


def _boxes(ctx) -> dict[str, list[tuple[float, float, float, float]]]:
    out: dict[str, list] = {}
    for s in active_shapes(ctx):
        out.setdefault(s["label"], []).append((s["x"], s["y"], s["w"], s["h"]))
    return out


@pytest.mark.parametrize(
    ("folder", "records", "per_class"),
    [
        ("test_import_yolo_data", 7, {"closed_door": 10, "bus": 8, "number": 6, "opened_door": 1}),
        ("test_import_yolo_data_unif_dims", 5, {"closed_door": 9, "bus": 6, "number": 4}),
    ],
)
def test_label_studio_converter_samples(ctx, folder, records, per_class):
    path = require_shared_data("exports", "label-studio", "sdk-converter-tests", folder)
    project = make_project(ctx, "doors", "detection", DOORS)
    assert detect_format(path) == "yolo"
    report = ingest_path(ctx, project, path)
    assert (report.records, report.images_new, report.annotations_new) == (
        records,
        records,
        records,
    )
    assert report.shapes_per_class == per_class
    assert report.warnings == [] and report.skipped == []
    # img_1 is 640x329 in both folders: '2 0.49765625 0.46200607902735563 0.9640625 ...'
    # is a bus at whole pixels (10, 9, 617, 286).
    assert any(b == pytest.approx((10, 9, 617, 286), abs=1e-6) for b in _boxes(ctx)["bus"])
    before = row_counts(ctx)
    again = ingest_path(ctx, project, path)
    assert (again.annotations_new, again.annotations_unchanged) == (0, records)
    assert row_counts(ctx) == before


def test_sizes_come_from_each_image_header(ctx):
    """The same label line lands on different pixels in images of different sizes: in the
    uniform-size folder img_2 is 640x329 instead of 640x427."""
    path = require_shared_data(
        "exports", "label-studio", "sdk-converter-tests", "test_import_yolo_data_unif_dims"
    )
    project = make_project(ctx, "doors", "detection", DOORS)
    ingest_path(ctx, project, path)
    bus = sorted(_boxes(ctx)["bus"])
    assert (125.0, pytest.approx(93.2, abs=0.05), 453.0, pytest.approx(192.6, abs=0.05)) in [
        (round(x, 6), y, round(w, 6), h) for x, y, w, h in bus
    ]


def _ultralytics(root: Path) -> Path:
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\n"
        "names:\n  0: RBC\n  1: WBC\n  2: Platelets\n"
    )
    for name, sub, seed in (("a", "train", 1), ("b", "train", 2), ("c", "val", 3), ("d", "val", 4)):
        (root / "images" / sub / f"{name}.png").write_bytes(png(width=100, height=50, seed=seed))
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1\n\n")
    (root / "labels" / "train" / "b.txt").write_text("2 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5\n")
    (root / "labels" / "val" / "c.txt").write_text("")  # background image: labelled, empty
    return root  # d has no label file: unlabeled


def test_ultralytics_layout_boxes_polygons_and_subsets(ctx, tmp_path):
    root = _ultralytics(tmp_path / "smears")
    project = make_project(ctx, "cells", "segmentation", CELLS)
    assert detect_format(root) == "yolo"
    report = ingest_path(ctx, project, root)
    assert (report.records, report.annotations_new, report.unlabeled) == (4, 3, 1)
    assert report.shapes_per_kind == {"box": 2, "polygon": 1}
    shapes = {s["label"]: s for s in active_shapes(ctx)}
    rbc = shapes["RBC"]
    assert (rbc["x"], rbc["y"], rbc["w"], rbc["h"]) == pytest.approx((40, 15, 20, 20))
    points = [c for p in shapes["Platelets"]["points"] for c in p]
    assert points == pytest.approx([10, 5, 30, 5, 30, 25, 10, 25])
    meta = item_meta(ctx)
    assert {k: m.get("subset") for k, m in meta.items()} == {
        "images/train/a.png": "train",
        "images/train/b.png": "train",
        "images/val/c.png": "val",
        "images/val/d.png": "val",
    }


def test_roboflow_layout_subset_folders_first(ctx, tmp_path):
    root = tmp_path / "rf"
    (root / "valid" / "images").mkdir(parents=True)
    (root / "valid" / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [RBC, WBC]\nnc: 2\n")
    (root / "valid" / "images" / "x.png").write_bytes(png())
    (root / "valid" / "labels" / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    project = make_project(ctx, "cells", "detection", CELLS)
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"WBC": 1}
    assert item_meta(ctx)["valid/images/x.png"]["subset"] == "val"


def test_cvat_yolo_export(ctx, tmp_path):
    root = tmp_path / "task_3_dataset"
    (root / "obj_train_data").mkdir(parents=True)
    (root / "obj.names").write_text("RBC\nWBC\nPlatelets\n")
    (root / "obj.data").write_text(
        "classes = 3\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n"
    )
    (root / "train.txt").write_text("data/obj_train_data/f1.png\n")
    (root / "obj_train_data" / "f1.png").write_bytes(png(seed=5))
    (root / "obj_train_data" / "f1.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    project = make_project(ctx, "cells", "detection", CELLS)
    assert detect_format(root) == "yolo"
    report = ingest_path(ctx, project, root)
    assert (report.records, report.shapes_per_class) == (1, {"WBC": 1})
    assert item_meta(ctx)["obj_train_data/f1.png"]["subset"] == "train"


def test_annotation_only_export_finds_images_under_image_root(ctx, tmp_path):
    root = tmp_path / "labels_only"
    (root / "obj_train_data").mkdir(parents=True)
    (root / "obj.names").write_text("RBC\n")
    (root / "obj_train_data" / "f1.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "f1.png").write_bytes(png(seed=9))
    project = make_project(ctx, "cells", "detection", CELLS)
    with pytest.raises(InputError, match=r"f1\.txt.*no image for this label file"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, image_root=frames)
    assert (report.records, report.shapes_per_class) == (1, {"RBC": 1})


def test_class_numbers_without_names_are_mapped_with_label_map(ctx, tmp_path):
    root = tmp_path / "bare"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "a.png").write_bytes(png())
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    project = make_project(ctx, "cells", "detection", CELLS)
    with pytest.raises(InputError, match="label '0' is not in project"):
        ingest_path(ctx, project, root)
    report = ingest_path(ctx, project, root, label_map={"0": "RBC"})
    assert report.shapes_per_class == {"RBC": 1}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("7 0.5 0.5 0.2 0.2", "class 7 is not among the 3 class names"),
        ("0 320 240 20 20", "coordinates must be normalised to 0..1"),
        ("0 0.5 0.5 0.2 0.2 0.45 0.5 2 0.55 0.5 1", "looks like a YOLO pose line"),
        ("0 0.5 0.5 0.2 0.2 0.9", "6 values; expected 'class cx cy w h'"),
        ("0 0.5 0.5 0 0.2", "box has zero size"),
        ("0 0.5 nan 0.2 0.2", "coordinate 'nan' is not a finite number"),
        ("RBC 0.5 0.5 0.2 0.2", "class 'RBC' is not a number"),
        ("1.5 0.5 0.5 0.2 0.2", "class '1.5' is not a class index"),
    ],
)
def test_bad_label_lines_name_file_line_and_reason(ctx, tmp_path, line, reason):
    root = _ultralytics(tmp_path / "d")
    (root / "labels" / "train" / "b.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    project = make_project(ctx, "cells", "segmentation", CELLS)
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, root)
    assert err.value.file.endswith("labels/train/b.txt")
    assert err.value.record == "image images/train/b.png / line 2"
    assert reason in err.value.reason
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, skip_invalid=True)
    assert report.annotations_new == 2 and len(report.skipped) == 1


def test_orphan_label_and_corrupt_image_are_skipped_with_skip_invalid(ctx, tmp_path):
    root = _ultralytics(tmp_path / "d")
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "images" / "train" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    project = make_project(ctx, "cells", "segmentation", CELLS)
    with pytest.raises(InputError):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, skip_invalid=True)
    skipped = {Path(s.file).name: s.reason for s in report.skipped}
    assert "cannot be read" in skipped["b.txt"]
    assert "no image for this label file" in skipped["ghost.txt"]
    assert (report.records, report.annotations_new) == (5, 2)


def test_an_image_that_viewers_turn_is_refused_naming_it(ctx, tmp_path):
    """A phone photo stored 100x50 with EXIF orientation 6 is shown 50x100: the tools
    draw on that, and the normalised boxes landed turned on the stored pixels."""
    import io

    from PIL import Image

    root = _ultralytics(tmp_path / "d")
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 50), (200, 120, 140)).save(buf, format="JPEG", exif=exif)
    (root / "images" / "train" / "a.png").unlink()
    (root / "images" / "train" / "a.jpg").write_bytes(buf.getvalue())
    project = make_project(ctx, "cells", "segmentation", CELLS)
    with pytest.raises(InputError, match="EXIF orientation 6: labelling tools show it") as err:
        ingest_path(ctx, project, root)
    assert err.value.record == "image images/train/a.jpg" and "a.jpg" in err.value.file
    assert "exif_transpose" in err.value.reason and row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, skip_invalid=True)
    assert [s.record for s in report.skipped] == ["image images/train/a.jpg"]
    # Orientation 1 (upright as stored) is read as before.
    exif[0x0112] = 1
    Image.new("RGB", (100, 50), (200, 120, 140)).save(buf := io.BytesIO(), "JPEG", exif=exif)
    (root / "images" / "train" / "a.jpg").write_bytes(buf.getvalue())
    assert ingest_path(ctx, project, root).skipped == []
    # A class folder's photo: its label has no place to land turned, so it is read.
    exif[0x0112] = 6
    classes = tmp_path / "classes"
    for name in ("healthy", "infected"):
        (classes / name).mkdir(parents=True)
        Image.new("RGB", (100, 50), (9, 9, 9)).save(classes / name / "a.jpg", exif=exif)
        exif[0x0112] = 8
    assert detect_format(classes) == "folders"
    cls = make_project(ctx, "cls", "classification", ["healthy", "infected"])
    assert ingest_path(ctx, cls, classes).skipped == []


def test_pose_datasets_are_refused_clearly(ctx, tmp_path):
    root = _ultralytics(tmp_path / "d")
    (root / "data.yaml").write_text("kpt_shape: [17, 3]\nnames: [person]\n")
    project = make_project(ctx, "cells", "detection", CELLS)
    with pytest.raises(InputError, match=r"pose .* not supported"):
        ingest_path(ctx, project, root, fmt="yolo")


_VALID_LINES = b"0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1\n2 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5\n"


def _fuzz(label: bytes, yaml_text: bytes | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "labels").mkdir()
        (root / "images" / "a.png").write_bytes(png(width=20, height=10))
        (root / "labels" / "a.txt").write_bytes(label)
        (root / "data.yaml").write_bytes(yaml_text or b"names: [RBC, WBC, Platelets]\n")
        read_all("yolo", root)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_label_bytes_only_raise_input_errors(data):
    _fuzz(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(_VALID_LINES))
def test_fuzz_mutated_labels_only_raise_input_errors(data):
    _fuzz(data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(b"names:\n  0: RBC\n  1: WBC\nkpt_shape: [1, 2]\npath: .\n") | st.binary())
def test_fuzz_data_yaml_only_raises_input_errors(data):
    _fuzz(_VALID_LINES, data)
