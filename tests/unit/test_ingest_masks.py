"""Mask-folder ingest end to end: ISBI 2012 membrane masks, CVAT 'Segmentation mask 1.1',
plain images/ + masks/ with a label map, and broken masks."""

from __future__ import annotations

import io
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import select

from labelloop.db.models import Annotation, SourceItem
from labelloop.errors import InputError
from labelloop.geometry import decode_mask, instance_count
from labelloop.ingest import ingest_path
from labelloop.ingest.formats import detect_format
from labelloop.ingest.readers._labelmap import parse_labelmap_txt
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

CELLS = ["RBC", "WBC", "Platelets"]


def _png(arr: np.ndarray, mode: str | None = None, palette: dict | None = None) -> bytes:
    im = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    if palette:
        flat = [0] * 768
        for index, rgb in palette.items():
            flat[index * 3 : index * 3 + 3] = rgb
        im.putpalette(flat)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _areas(ctx) -> list[tuple[str, int]]:
    return sorted(
        (s["label"], int(decode_mask(s["size"], s["counts"]).sum()))
        for s in active_shapes(ctx)
        if s["kind"] == "mask"
    )


@pytest.fixture
def project(ctx):
    return make_project(ctx, "cells", "segmentation", CELLS)


def test_isbi_membrane_masks_become_one_mask_per_cell(ctx):
    train = require_shared_data("isbi2012-membrane", "train")
    project = make_project(ctx, "em", "segmentation", ["cell"])
    assert detect_format(train) == "masks"
    with pytest.raises(InputError, match="label '255' is not in project 'em'"):
        ingest_path(ctx, project, train)
    report = ingest_path(ctx, project, train, label_map={"255": "cell"})
    assert (report.records, report.images_new, report.annotations_new) == (30, 30, 30)
    # 255 = cell interior, separated by 0 = membrane: every enclosed region is one cell.
    assert report.shapes_per_class == {"cell": 3431}
    assert all(s["size"] == [512, 512] for s in active_shapes(ctx))
    with ctx.db.session() as s:
        ann = s.scalars(
            select(Annotation).join(SourceItem).where(SourceItem.external_id == "0")
        ).one()
    label0 = np.asarray(Image.open(train / "label" / "0.png"))
    assert len(ann.shapes) == instance_count((label0 > 0).astype(np.uint8), 1, min_area=1) == 136
    before = row_counts(ctx)
    again = ingest_path(ctx, project, train, label_map={"255": "cell"})
    assert again.annotations_unchanged == 30 and row_counts(ctx) == before


def _plain(root: Path, label_map: dict | list | None = None) -> Path:
    (root / "images" / "a").mkdir(parents=True)
    (root / "masks" / "a").mkdir(parents=True)
    for name, seed in (("a/1", 1), ("a/2", 2), ("pool", 3)):
        (root / "images" / f"{name}.png").write_bytes(png(seed=seed))
    m1 = np.zeros((48, 64), np.uint8)
    m1[2:10, 2:10] = 1  # RBC
    m1[20:30, 2:10] = 1  # another RBC, apart
    m1[30:40, 30:50] = 2  # WBC
    m2 = np.zeros((48, 64), np.uint8)
    m2[5:9, 5:9] = 3
    (root / "masks" / "a" / "1.png").write_bytes(_png(m1))
    (root / "masks" / "a" / "2.png").write_bytes(_png(m2))
    if label_map is not None:
        (root / "labels.json").write_text(json.dumps(label_map))
    return root


def test_images_and_grey_masks_with_labels_json(ctx, project, tmp_path):
    # A list of names is a label map too, not a Label Studio export of no tasks.
    listed = _plain(tmp_path / "listed", ["background", "RBC", "WBC", "Platelets"])
    assert detect_format(listed) == "masks"
    root = _plain(tmp_path / "d", {"0": "background", "1": "RBC", "2": "WBC", "3": "Platelets"})
    assert detect_format(root) == "masks"
    report = ingest_path(ctx, project, root)
    assert (report.records, report.annotations_new, report.unlabeled) == (3, 2, 1)
    assert _areas(ctx) == [("Platelets", 16), ("RBC", 64), ("RBC", 80), ("WBC", 200)]
    assert set(item_meta(ctx)) == {"a/1", "a/2", "pool"}


@pytest.mark.parametrize(
    "text",
    [
        "background:0,0,0::\nRBC:1,1,1::\nWBC:2,2,2::\nPlatelets:3,3,3::\n",  # CVAT, by line
        "0 background\n1 RBC\n2: WBC\n3=Platelets\n",
        "background\nRBC\nWBC\nPlatelets\n",
    ],
)
def test_labelmap_txt_variants(ctx, project, tmp_path, text):
    root = _plain(tmp_path / "d")
    (root / "labelmap.txt").write_text(text)
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"RBC": 2, "WBC": 1, "Platelets": 1}


def test_touching_cells_merge_without_instance_masks(ctx, project, tmp_path):
    root = _plain(tmp_path / "d", {"1": "RBC", "2": "WBC", "3": "Platelets"})
    m = np.zeros((48, 64), np.uint8)
    m[2:10, 2:10] = 1
    m[2:10, 10:18] = 1  # shares an edge with the first: one component
    m[12:14, 18:20] = 1  # touches only at a corner: 4-connectivity keeps it apart
    m[10:12, 20:22] = 1
    (root / "masks" / "a" / "1.png").write_bytes(_png(m))
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"RBC": 3, "Platelets": 1}


def test_cvat_segmentation_mask_export(ctx, project, tmp_path):
    root = tmp_path / "task_5_dataset"
    for d in ("SegmentationClass", "SegmentationObject", "JPEGImages", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nRBC:250,50,83::\nWBC:61,61,245::\n"
    )
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("f_000\nf_001\n")
    for i in range(2):
        (root / "JPEGImages" / f"f_00{i}.jpg").write_bytes(png(seed=i))  # PNG bytes, .jpg name
    rgb = np.zeros((48, 64, 3), np.uint8)
    obj = np.zeros((48, 64), np.uint8)
    rgb[0:10, 0:20] = (250, 50, 83)
    obj[0:10, 0:10], obj[0:10, 10:20] = 1, 2  # two RBC side by side
    rgb[20:30, 20:30] = (61, 61, 245)
    obj[20:30, 20:30] = 3
    obj[29, 20:30] = 255  # VOC void border inside the WBC: ignored
    (root / "SegmentationClass" / "f_000.png").write_bytes(_png(rgb))
    (root / "SegmentationObject" / "f_000.png").write_bytes(
        _png(obj, "P", {1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 255: (224, 224, 192)})
    )
    assert detect_format(root) == "masks"
    report = ingest_path(ctx, project, root)
    assert (report.records, report.annotations_new, report.unlabeled) == (2, 1, 1)
    assert _areas(ctx) == [("RBC", 100), ("RBC", 100), ("WBC", 90)]
    assert {m.get("subset") for m in item_meta(ctx).values()} == {"default"}


def test_broken_masks_fail_clearly_and_write_nothing(ctx, project, tmp_path):
    root = _plain(tmp_path / "d", {"1": "RBC", "2": "WBC", "3": "Platelets"})
    (root / "masks" / "orphan.png").write_bytes(_png(np.zeros((48, 64), np.uint8)))
    (root / "masks" / "a" / "2.png").write_bytes(_png(np.ones((24, 32), np.uint8)))
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, root)
    assert err.value.record == "image a/2"
    assert "mask 2.png is 32x24 but its image is 64x48" in err.value.reason
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, skip_invalid=True)
    reasons = {s.record: s.reason for s in report.skipped}
    assert "no image for mask orphan.png" in reasons["image orphan"]
    assert report.annotations_new == 1


def test_a_mask_of_a_type_not_read_is_refused_not_its_image_left_unlabeled(ctx, project, tmp_path):
    """A mask saved as GIF (Carvana's layout) was passed over: its image then read as
    unlabeled, every cell in it gone without a word."""
    root = _plain(tmp_path / "d")
    # The label map kept in the mask folder is read, not refused as a stray mask.
    (root / "masks" / "labels.json").write_text(
        json.dumps({"1": "RBC", "2": "WBC", "3": "Platelets"})
    )
    assert ingest_path(ctx, project, root, dry_run=True).skipped == []
    (root / "masks" / "pool.gif").write_bytes(b"GIF89a")
    (root / "masks" / "a" / "1.npy").write_bytes(b"\x93NUMPY")  # a twin of 1.png: fine
    with pytest.raises(InputError, match=r"pool\.gif in the mask folder is not an image type"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, root, skip_invalid=True)
    assert [s.record for s in report.skipped] == ["mask pool.gif"]


def test_unknown_values_and_colours_are_named(ctx, project, tmp_path):
    root = _plain(tmp_path / "d", {"1": "RBC", "2": "WBC"})
    with pytest.raises(InputError, match=r"mask 2\.png has pixel values not in .*labels\.json: 3"):
        ingest_path(ctx, project, root)
    colour = np.zeros((48, 64, 3), np.uint8)
    colour[1:5, 1:5] = (200, 10, 10)
    (root / "masks" / "a" / "1.png").write_bytes(_png(colour))
    (root / "labels.json").write_text(json.dumps({"1": "RBC", "3": "Platelets"}))
    with pytest.raises(InputError, match="colour mask; a label map with colours is needed"):
        ingest_path(ctx, project, root)
    (root / "labels.json").write_text(json.dumps({"RBC": [200, 10, 10], "Platelets": "#030303"}))
    report = ingest_path(ctx, project, root)
    assert report.shapes_per_class == {"RBC": 1, "Platelets": 1}
    assert row_counts(ctx)["Image"] == 3


def test_grey_masks_drawn_in_0_and_255_are_never_read_as_void(ctx, tmp_path):
    """255 is VOC's void border in palette masks only: in a grey mask it is the common way
    to draw foreground, so a map that does not name it is refused, not read as empty."""
    project = make_project(ctx, "cells", "segmentation", ["cell"])
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    grey = np.zeros((48, 64), np.uint8)
    grey[4:12, 4:12] = 255
    (root / "images" / "1.png").write_bytes(png(seed=1))
    (root / "masks" / "1.png").write_bytes(_png(grey))
    (root / "labelmap.txt").write_text("0 background\n1 cell\n")
    with pytest.raises(InputError, match=r"mask 1\.png has pixel values not in .*: 255"):
        ingest_path(ctx, project, root)
    assert row_counts(ctx) == NOTHING
    # Beside labelled objects, 255 is a void border (DeepLab's grey VOC masks), ignored.
    bordered = grey.copy()
    bordered[20:30, 20:30] = 1
    (root / "masks" / "1.png").write_bytes(_png(bordered))
    report = ingest_path(ctx, project, root, dry_run=True)
    assert report.shapes_per_class == {"cell": 1}
    # The same pixels in a palette mask are VOC's void and stay ignored.
    (root / "masks" / "1.png").write_bytes(_png(grey, "P", {1: (128, 0, 0), 255: (224, 224, 192)}))
    report = ingest_path(ctx, project, root, dry_run=True)
    assert report.shapes_per_class == {}
    (root / "masks" / "1.png").write_bytes(_png(grey))
    (root / "labelmap.txt").write_text("0 background\n255 cell\n")
    assert ingest_path(ctx, project, root).shapes_per_class == {"cell": 1}


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        (
            "labelmap.txt",
            "0 background\n255 cell\n255 nucleus\n",
            r"line 3 .*255 already names 'cell'",
        ),
        ("labelmap.txt", "cell:9,9,9::\nnucleus:9,9,9::\n", r"line 2 .*already names 'cell'"),
        ("labels.json", '{"cell": 1, "nucleus": 1}', r"label 'nucleus': 1 already names 'cell'"),
    ],
)
def test_a_label_map_that_names_one_value_twice_is_refused(tmp_path, name, text, said):
    from labelloop.ingest.readers._labelmap import load_label_map

    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=said) as err:
        load_label_map(tmp_path)
    assert err.value.file == str(tmp_path / name)


def test_label_map_defects_name_the_file(tmp_path):
    path = tmp_path / "labelmap.txt"
    path.write_text("background:0,0,0::\nRBC:300,0,0::\n")
    with pytest.raises(InputError, match=r"line 2 .*colour is not r,g,b in 0\.\.255"):
        parse_labelmap_txt(path)
    path.write_text("# only comments\n")
    with pytest.raises(InputError, match="names no labels"):
        parse_labelmap_txt(path)


def _fuzz(mask: bytes, labelmap: bytes | None = None, name: str = "labelmap.txt") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "masks").mkdir()
        (root / "images" / "a.png").write_bytes(png(width=16, height=8))
        (root / "masks" / "a.png").write_bytes(mask)
        if labelmap is not None:
            (root / name).write_bytes(labelmap)
        read_all("masks", root)


_MASK = np.zeros((8, 16), np.uint8)
_MASK[1:4, 1:4], _MASK[5:7, 8:15] = 1, 2
_VALID_MASK = _png(_MASK)
_LABELMAP = b"# label:color_rgb:parts:actions\nbackground:0,0,0::\nRBC:1,1,1::\nWBC:2,2,2::\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | mutated(_VALID_MASK))
def test_fuzz_mask_bytes_only_raise_input_errors(data):
    _fuzz(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(_LABELMAP) | st.binary(max_size=200), st.sampled_from(["labelmap.txt"]))
def test_fuzz_labelmap_txt_only_raises_input_errors(data, name):
    _fuzz(_VALID_MASK, data, name)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(b'{"0": "background", "1": "RBC", "2": [1, 2, 3], "WBC": "#020202"}'))
def test_fuzz_labels_json_only_raises_input_errors(data):
    _fuzz(_VALID_MASK, data, "labels.json")


def test_subset_counts_from_image_sets_are_kept(ctx, project, tmp_path):
    root = tmp_path / "seg"
    for d in ("SegmentationClass", "JPEGImages", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    (root / "labelmap.txt").write_text("background:0,0,0::\nRBC:255,0,0::\n")
    for i in range(3):
        (root / "JPEGImages" / f"{i}.png").write_bytes(png(seed=i))
        m = np.zeros((48, 64, 3), np.uint8)
        m[i : i + 5, 0:5] = (255, 0, 0)
        (root / "SegmentationClass" / f"{i}.png").write_bytes(_png(m))
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("0\n1\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2\n")
    ingest_path(ctx, project, root)
    assert Counter(m["subset"] for m in item_meta(ctx).values()) == {"train": 2, "val": 1}
