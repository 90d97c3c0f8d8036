"""Pascal VOC ingest end to end: the real BCCD set with its defects, CVAT's VOC export with
masks, and broken files that must fail clearly and write nothing."""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from labelloop.errors import InputError
from labelloop.geometry import decode_mask
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

LABELS = ["RBC", "WBC", "Platelets"]


def voc_xml(filename: str, objects: list[tuple], size: tuple[int, int] = (64, 48)) -> str:
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(len(o) > 5 and o[5])}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for o in objects
        for name, x0, y0, x1, y1 in [o[:5]]
    )
    return (
        f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>"
        f"<path>/home/someone/JPEGImages/{filename}</path><source><database>Unknown</database>"
        f"</source><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth>"
        f"</size><segmented>0</segmented>{objs}</annotation>"
    )


def voc_dataset(root: Path, items: dict[str, list[tuple]], subsets: dict | None = None) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i, (stem, objects) in enumerate(items.items()):
        (root / "JPEGImages" / f"{stem}.png").write_bytes(png(seed=i))
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", objects))
    for subset, ids in (subsets or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{subset}.txt").write_text("\n".join(ids) + "\n")
    return root


TWO_CELLS = [("RBC", 2, 3, 20, 30), ("WBC", 30, 10, 60, 40, True)]


@pytest.fixture
def project(ctx):
    return make_project(ctx, "cells", "detection", LABELS)


def test_bccd_real_defects_fail_clearly_then_skip_invalid_ingests_the_rest(ctx, project):
    bccd = require_shared_data("bccd", "BCCD")
    raw = Counter(
        o.findtext("name")
        for xml in (bccd / "Annotations").glob("*.xml")
        for o in ET.parse(xml).getroot().iter("object")
    )
    assert raw == {"RBC": 4155, "WBC": 372, "Platelets": 361}  # the dataset README's figures
    assert detect_format(bccd) == "voc"

    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, bccd)
    msg = str(err.value)
    assert "BloodImage_00338.xml" in msg
    assert "image BloodImage_00338 / object 13 (RBC)" in msg
    assert "xmin 504 >= xmax 504" in msg
    assert row_counts(ctx) == NOTHING

    report = ingest_path(ctx, project, bccd, skip_invalid=True)
    # Two labelImg click artefacts (zero-size RBC boxes) take their images with them:
    # 00338 (13 RBC, 1 WBC, 2 Platelets) and 00343 (9 RBC, 1 WBC).
    assert sorted((Path(s.file).name, s.record) for s in report.skipped) == [
        ("BloodImage_00338.xml", "image BloodImage_00338 / object 13 (RBC)"),
        ("BloodImage_00343.xml", "image BloodImage_00343 / object 4 (RBC)"),
    ]
    assert (report.records, report.images_new, report.annotations_new) == (364, 362, 362)
    assert report.shapes_per_class == {"RBC": 4133, "WBC": 370, "Platelets": 359}
    assert report.warnings == []  # no box sticks out of its 640x480 image
    subsets = Counter(m.get("subset") for m in item_meta(ctx).values())
    assert subsets == {"train": 204, "val": 86, "test": 72}

    before = row_counts(ctx)
    again = ingest_path(ctx, project, bccd, skip_invalid=True)
    assert (again.images_new, again.annotations_new, again.annotations_unchanged) == (0, 0, 362)
    assert row_counts(ctx) == before


def test_voc_folder_boxes_subsets_and_attributes(ctx, project, tmp_path):
    root = voc_dataset(
        tmp_path / "smear",
        {"a": TWO_CELLS, "b": [("Platelets", 5, 5, 9, 9)]},
        subsets={"train": ["a"], "trainval": ["a", "b"]},
    )
    (root / "JPEGImages" / "pool.png").write_bytes(png(seed=7))  # no XML: unlabeled
    report = ingest_path(ctx, project, root)
    assert report.format == "voc"
    assert (report.records, report.annotations_new, report.unlabeled) == (3, 2, 1)
    assert report.shapes_per_class == {"RBC": 1, "WBC": 1, "Platelets": 1}
    shapes = active_shapes(ctx)
    rbc = next(s for s in shapes if s["label"] == "RBC")
    assert (rbc["x"], rbc["y"], rbc["w"], rbc["h"]) == (2, 3, 18, 27)
    wbc = next(s for s in shapes if s["label"] == "WBC")
    assert wbc["attributes"] == {"difficult": True}
    meta = item_meta(ctx)
    assert meta["a"]["subset"] == "train" and meta["b"]["subset"] == "trainval"
    assert "subset" not in meta["pool"]


def test_labelimg_folder_with_xml_next_to_images(ctx, project, tmp_path):
    (tmp_path / "a.png").write_bytes(png(seed=1))
    (tmp_path / "a.xml").write_text(voc_xml("a.png", TWO_CELLS))
    assert detect_format(tmp_path) == "voc"
    report = ingest_path(ctx, project, tmp_path)
    assert (report.records, report.shapes_per_class) == (1, {"RBC": 1, "WBC": 1})


def test_filename_that_does_not_match_falls_back_to_the_xml_stem(ctx, project, tmp_path):
    root = voc_dataset(tmp_path / "d", {"a": TWO_CELLS})
    (root / "Annotations" / "a.xml").write_text(voc_xml("renamed_later.jpg", TWO_CELLS))
    report = ingest_path(ctx, project, root)
    assert report.annotations_new == 1
    assert item_meta(ctx)["a"]["xml_filename"] == "renamed_later.jpg"


def test_missing_image_bad_box_and_label_fail_whole_ingest(ctx, project, tmp_path):
    root = voc_dataset(tmp_path / "d", {"a": TWO_CELLS, "b": TWO_CELLS, "c": TWO_CELLS})
    (root / "JPEGImages" / "b.png").unlink()
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, root)
    msg = str(err.value)
    assert "b.xml" in msg and "image b" in msg and "image file 'b.png' not found" in msg
    assert row_counts(ctx) == NOTHING

    (root / "Annotations" / "c.xml").write_text(voc_xml("c.png", [("rbc ", 1, 1, 9, 9)]))
    report = ingest_path(ctx, project, root, skip_invalid=True)
    assert report.annotations_new == 1
    reasons = {s.record: s.reason for s in report.skipped}
    assert "not found" in reasons["image b"]
    assert "label 'rbc' is not in project 'cells'" in reasons["image c / annotation voc"]
    again = ingest_path(ctx, project, root, skip_invalid=True, label_map={"rbc": "RBC"})
    assert again.annotations_new == 1 and again.shapes_per_class == {"RBC": 2, "WBC": 1}


def test_inverted_box_names_the_object(ctx, project, tmp_path):
    root = voc_dataset(tmp_path / "d", {"a": [("RBC", 1, 1, 5, 5), ("WBC", 40, 10, 20, 30)]})
    with pytest.raises(InputError, match=r"image a / object 2 \(WBC\): box has xmin 40 >= xmax 20"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING


def test_a_flag_that_is_not_0_or_1_is_refused_not_read_as_false(ctx, project, tmp_path):
    root = voc_dataset(tmp_path / "d", {"a": TWO_CELLS})
    xml = root / "Annotations" / "a.xml"
    xml.write_text(
        xml.read_text().replace("<difficult>1</difficult>", "<difficult>yes</difficult>")
    )
    with pytest.raises(InputError, match=r"image a / object 2 \(WBC\): <difficult> 'yes' is not"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING
    xml.write_text(xml.read_text().replace("<difficult>yes<", "<difficult>True<"))
    ingest_path(ctx, project, root)
    wbc = next(s for s in active_shapes(ctx) if s["label"] == "WBC")
    assert wbc["attributes"] == {"difficult": True}


def test_parts_and_a_polygon_beside_a_box_are_said_not_dropped(ctx, project, tmp_path):
    """VOC's person layout gives an object <part>s (head, hands) with boxes of their own,
    and some tools write a <polygon> beside the <bndbox>: both were passed over unseen."""
    root = voc_dataset(tmp_path / "d", {"a": TWO_CELLS})
    xml = root / "Annotations" / "a.xml"
    part = "<part><name>nucleus</name><bndbox><xmin>4</xmin><ymin>4</ymin><xmax>9</xmax>"
    part += "<ymax>9</ymax></bndbox></part>"
    pts = "".join(f"<pt><x>{x}</x><y>{y}</y></pt>" for x, y in [(2, 3), (20, 3), (9, 30)])
    poly = f"<polygon>{pts}</polygon>"
    text = xml.read_text().replace("</bndbox></object>", f"</bndbox>{part}{part}</object>", 1)
    xml.write_text(text.replace("</bndbox></object>", f"</bndbox>{poly}</object>", 1))
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"RBC": 1, "WBC": 1}
    assert [w.removeprefix(f"{xml}: ") for w in report.warnings] == [
        "image a / object 1 (RBC): 2 <part>(s) left out; the object's own box is read",
        "image a / object 2 (WBC): its <polygon> is left out; its <bndbox> is read",
    ]


def test_boxes_outside_the_image_are_clipped_or_refused_by_core(ctx, project, tmp_path):
    root = voc_dataset(tmp_path / "d", {"a": [("RBC", 50, 40, 70, 60)]})
    report = ingest_path(ctx, project, root)
    assert "RBC box clipped" in report.warnings[0]
    box = active_shapes(ctx)[0]
    assert (box["x"] + box["w"], box["y"] + box["h"]) == (64, 48)
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", [("WBC", 100, 1, 120, 9)]))
    with pytest.raises(InputError, match="WBC box lies outside the image"):
        ingest_path(ctx, project, root)


def test_truncated_xml_and_wrong_size_are_record_errors(ctx, project, tmp_path):
    root = voc_dataset(tmp_path / "d", {"a": TWO_CELLS, "b": TWO_CELLS, "c": TWO_CELLS})
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text()[:-40])
    (root / "Annotations" / "c.xml").write_text(voc_xml("c.png", TWO_CELLS, size=(640, 480)))
    with pytest.raises(InputError, match=r"a\.xml.*image a: invalid XML"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, skip_invalid=True)
    assert report.annotations_new == 1
    reasons = {s.record: s.reason for s in report.skipped}
    assert "<size> says 640x480 but image c.png is 64x48" in reasons["image c"]


def test_entity_expansion_is_refused(ctx, project, tmp_path):
    root = voc_dataset(tmp_path / "d", {"a": TWO_CELLS})
    bomb = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><annotation>&x;</annotation>'
    (root / "Annotations" / "a.xml").write_text(bomb)
    with pytest.raises(InputError, match="XML refused"):
        ingest_path(ctx, project, root)


def _palette_png(arr: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> bytes:
    import io

    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    palette = [0] * 768
    for index, rgb in colours.items():
        palette[index * 3 : index * 3 + 3] = rgb
    im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_cvat_voc_export_with_segmentation_masks(ctx, tmp_path):
    project = make_project(ctx, "seg", "segmentation", LABELS)
    root = voc_dataset(tmp_path / "task_7", {"frame_0": [("WBC", 30, 10, 60, 40)]})
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nRBC:255,0,0::\nWBC:0,0,255::\n"
    )
    classes = np.zeros((48, 64), np.uint8)
    objects = np.zeros((48, 64), np.uint8)
    classes[5:15, 5:15] = 1  # two RBC that touch: one region, two instances
    classes[5:15, 15:25] = 1
    classes[30:40, 40:50] = 2
    objects[5:15, 5:15], objects[5:15, 15:25], objects[30:40, 40:50] = 1, 2, 3
    (root / "SegmentationClass").mkdir()
    (root / "SegmentationObject").mkdir()
    colours = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255)}
    (root / "SegmentationClass" / "frame_0.png").write_bytes(_palette_png(classes, colours))
    objects_png = _palette_png(objects, {1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0)})
    (root / "SegmentationObject" / "frame_0.png").write_bytes(objects_png)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("frame_0\n")

    report = ingest_path(ctx, project, root)
    assert report.format == "voc"
    assert report.shapes_per_kind == {"box": 1, "mask": 3}
    assert report.shapes_per_class == {"RBC": 2, "WBC": 2}
    masks = [s for s in active_shapes(ctx) if s["kind"] == "mask"]
    areas = sorted((s["label"], int(decode_mask(s["size"], s["counts"]).sum())) for s in masks)
    assert areas == [("RBC", 100), ("RBC", 100), ("WBC", 100)]
    assert item_meta(ctx)["frame_0"]["subset"] == "default"


def test_mask_of_another_size_is_the_records_error(ctx, tmp_path):
    project = make_project(ctx, "seg", "segmentation", LABELS)
    root = voc_dataset(tmp_path / "d", {"a": TWO_CELLS})
    (root / "labelmap.txt").write_text("background:0,0,0::\nRBC:255,0,0::\n")
    (root / "SegmentationClass").mkdir()
    wrong = _palette_png(np.ones((10, 10), np.uint8), {1: (255, 0, 0)})
    (root / "SegmentationClass" / "a.png").write_bytes(wrong)
    with pytest.raises(InputError, match=r"mask a\.png is 10x10 but its image is 64x48"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING


_VALID = voc_xml("a.png", TWO_CELLS).encode()


def _fuzz(xml_bytes: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "Annotations").mkdir()
        (root / "JPEGImages").mkdir()
        (root / "JPEGImages" / "a.png").write_bytes(png())
        (root / "Annotations" / "a.xml").write_bytes(xml_bytes)
        for rec in read_all("voc", root):
            for ann in rec.annotations:
                assert all(s.label for s in ann.shapes)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_only_raise_input_errors(data):
    _fuzz(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(_VALID))
def test_fuzz_mutated_xml_only_raises_input_errors(data):
    _fuzz(data)
