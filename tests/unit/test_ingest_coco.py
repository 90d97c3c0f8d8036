"""COCO instances / keypoints JSON ingest, end to end through the format registry."""

from __future__ import annotations

import copy
import io
import json
import random
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from pycocotools import mask as mask_utils
from scipy import ndimage

from labelloop.domain import shapes_from_json
from labelloop.errors import InputError
from labelloop.geometry import decode_mask, shape_bbox
from labelloop.ingest import ingest_path
from labelloop.ingest.formats import detect_format, formats
from labelloop.ingest.records import ReadOptions
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
H, W = 48, 64


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 120, 140)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def _rect_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: column-major runs, starting with background."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat[0] else runs


def _compressed(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


UNCOMPRESSED_MASK = _rect_mask(10, 20, 30, 40)
COMPRESSED_MASK = _rect_mask(0, 5, 0, 64)  # touches the top edge in every column


def coco_doc() -> dict:
    """Images, categories and annotations as COCO writes them; annotations interleaved."""
    return {
        "info": {"description": "smears"},
        "licenses": [],
        "categories": [
            {"id": 1, "name": "RBC", "supercategory": ""},
            {"id": 2, "name": "WBC", "supercategory": ""},
            {"id": 3, "name": "Platelets", "keypoints": ["centre"], "skeleton": []},
        ],
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H, "patient_id": "P7"},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
            {"id": 3, "file_name": "c.png", "width": W, "height": H},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[2, 2, 20, 2, 20, 20, 2, 20]],
                "bbox": [2, 2, 18, 18],
                "iscrowd": 0,
                "area": 324,
            },
            {"id": 11, "image_id": 2, "category_id": 2, "segmentation": [], "bbox": [5, 5, 10, 8]},
            {
                "id": 12,
                "image_id": 1,
                "category_id": 2,
                "segmentation": {"counts": _uncompressed(UNCOMPRESSED_MASK), "size": [H, W]},
                "bbox": [30, 10, 10, 10],
                "iscrowd": 1,
            },
            {
                "id": 13,
                "image_id": 2,
                "category_id": 1,
                "segmentation": {"counts": _compressed(COMPRESSED_MASK), "size": [H, W]},
                "bbox": [0, 0, 64, 5],
                "iscrowd": "false",
                "attributes": {"occluded": False, "lysed": "no"},
            },
            {
                "id": 14,
                "image_id": 1,
                "category_id": 3,
                "keypoints": [30, 40, 2],
                "num_keypoints": 1,
                "bbox": [30, 40, 0, 0],
            },
            {
                "id": 15,
                "image_id": 2,
                "category_id": 1,
                "segmentation": [
                    [40, 20, 50, 20, 50, 30, 40, 30],
                    [52, 32, 60, 32, 60, 40, 52, 40],
                ],
                "bbox": [40, 20, 20, 20],
                "iscrowd": 0,
            },
        ],
    }


def _write(export: Path, doc: dict, name: str = "instances_default.json", subset: str = "") -> Path:
    (export / "annotations").mkdir(parents=True, exist_ok=True)
    folder = export / "images" / subset
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(doc["images"]):
        if isinstance(img, dict) and isinstance(img.get("file_name"), str):
            target = folder / img["file_name"]
            if target.parent.resolve().is_relative_to(folder.resolve()):
                target.write_bytes(png(seed=i + 10 * len(subset)))
    path = export / "annotations" / name
    path.write_text(json.dumps(doc))
    return path


def test_coco_folder_shapes_subsets_and_meta(ctx, tmp_path):
    export = tmp_path / "smears-coco"
    _write(export, coco_doc())
    val = {**coco_doc(), "images": [{"id": 1, "file_name": "d.png", "width": W, "height": H}]}
    val["annotations"] = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4]}]
    _write(export, val, "instances_val.json", subset="val")
    assert detect_format(export) == "coco"
    project = make_project(ctx, "smears", "segmentation", LABELS)
    report = ingest_path(ctx, project, export)
    assert (report.format, report.records, report.unlabeled, report.annotations_new) == (
        "coco",
        4,
        1,
        3,
    )
    assert report.shapes_per_kind == {"polygon": 1, "box": 2, "mask": 3, "keypoint": 1}
    assert report.shapes_per_class == {"RBC": 3, "WBC": 3, "Platelets": 1}
    meta = item_meta(ctx)
    assert set(meta) == {"default/1", "default/2", "default/3", "val/1"}
    assert meta["default/1"]["patient_id"] == "P7" and meta["val/1"]["subset"] == "val"
    assert meta["val/1"]["image_path"].endswith("images/val/d.png")
    shapes = shapes_from_json(active_shapes(ctx))
    masks = [s for s in shapes if s.kind == "mask"]
    decoded = {s.attributes.get("iscrowd", False): decode_mask(s.size, s.counts) for s in masks}
    assert np.array_equal(decoded[True], UNCOMPRESSED_MASK)
    assert any(np.array_equal(decode_mask(s.size, s.counts), COMPRESSED_MASK) for s in masks)
    two_parts = next(s for s in masks if shape_bbox(s) == (40.0, 20.0, 60.0, 40.0))
    assert ndimage.label(decode_mask(two_parts.size, two_parts.counts))[1] == 2  # one object
    point = next(s for s in shapes if s.kind == "keypoint")
    assert (point.label, point.x, point.y) == ("Platelets", 30.0, 40.0)
    assert point.attributes == {"instance": 14, "visibility": 2, "keypoint": "centre"}
    rbc_mask = next(s for s in masks if s.attributes.get("lysed"))
    assert rbc_mask.attributes == {"occluded": False, "lysed": "no"}  # "false" is not crowd


def test_reingest_is_idempotent(ctx, tmp_path):
    path = _write(tmp_path / "coco", coco_doc())
    project = make_project(ctx, "smears", "segmentation", LABELS)
    ingest_path(ctx, project, path)
    before = row_counts(ctx)
    again = ingest_path(ctx, project, tmp_path / "coco")
    assert (again.images_new, again.annotations_new, again.annotations_unchanged) == (0, 0, 2)
    assert row_counts(ctx) == before


def _break(doc: dict, what: str) -> dict:
    doc = copy.deepcopy(doc)
    anns = {a["id"]: a for a in doc["annotations"]}
    if what == "category":
        anns[10]["category_id"] = 9
    elif what == "bbox":
        anns[11]["bbox"] = [5, 5, -1, 8]
    elif what == "rle-size":
        anns[12]["segmentation"]["size"] = [40, W]
    elif what == "rle-string":
        anns[13]["segmentation"]["counts"] = "0P"
    elif what == "rle-sum":
        anns[12]["segmentation"]["counts"] = anns[12]["segmentation"]["counts"][:-1]
    elif what == "polygon":
        anns[10]["segmentation"] = [[2, 2, 20, "x", 20, 20]]
    elif what == "orphan":
        anns[11]["image_id"] = 99
    elif what == "image":
        doc["images"][1]["file_name"] = "../gone.png"
    return doc


@pytest.mark.parametrize(
    ("what", "record", "reason"),
    [
        ("category", "image 1 'a.png' / annotation 10", "category 9 is not in categories"),
        ("bbox", "image 2 'b.png' / annotation 11", "bbox [5, 5, -1, 8] has a negative size"),
        ("rle-size", "image 1 'a.png' / annotation 12", "RLE size 64x40 disagrees"),
        ("rle-string", "image 2 'b.png' / annotation 13", "RLE counts string is corrupt"),
        ("rle-sum", "image 1 'a.png' / annotation 12", "the 64x48 mask has 3072"),
        ("polygon", "image 1 'a.png' / annotation 10", "is not [x1, y1, x2, y2, x3, y3, ...]"),
        ("orphan", "image 99", "refer to image id 99, which is not in 'images'"),
        ("image", "image 2 '../gone.png'", "image file '../gone.png' not found"),
    ],
)
def test_broken_record_names_file_record_reason_and_writes_nothing(
    ctx, tmp_path, what, record, reason
):
    path = _write(tmp_path / "coco", _break(coco_doc(), what))
    project = make_project(ctx, "smears", "segmentation", LABELS)
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, path)
    assert err.value.file == str(path)
    assert err.value.record == record and reason in err.value.reason
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, path, skip_invalid=True)
    assert [(s.record, s.file) for s in report.skipped] == [(record, str(path))]
    assert report.records - len(report.skipped) == (3 if what == "orphan" else 2)


def test_label_outside_project_and_corrupt_image_are_refused(ctx, tmp_path):
    path = _write(tmp_path / "coco", coco_doc())
    project = make_project(ctx, "cells", "segmentation", ["RBC", "WBC"])
    with pytest.raises(InputError, match="label 'Platelets' is not in project") as err:
        ingest_path(ctx, project, path)
    assert err.value.record.startswith("image 1 'a.png'")
    (tmp_path / "coco" / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    project = make_project(ctx, "smears", "segmentation", LABELS)
    with pytest.raises(InputError, match="cannot decode image") as err:
        ingest_path(ctx, project, path)
    assert "b.png" in str(err.value) and err.value.record == "image 2 'b.png'"
    assert row_counts(ctx) == NOTHING
    # A file that is no image at all: said plainly (Pillow's own message names a BytesIO).
    (tmp_path / "coco" / "images" / "b.png").write_bytes(b"hello, not an image")
    with pytest.raises(
        InputError, match=r"a format Pillow does not read \(it starts b'hello, n'\)"
    ) as err:
        ingest_path(ctx, project, path)
    assert "BytesIO" not in str(err.value) and err.value.record == "image 2 'b.png'"
    assert row_counts(ctx) == NOTHING


def test_truncated_and_non_coco_json_are_stream_errors(ctx, tmp_path):
    path = _write(tmp_path / "coco", coco_doc())
    project = make_project(ctx, "smears", "segmentation", LABELS)
    path.write_text(path.read_text()[:-300])
    with pytest.raises(InputError, match="invalid or truncated JSON") as err:
        ingest_path(ctx, project, path)
    assert err.value.file == str(path)
    path.write_text('[{"data": {}}]')
    with pytest.raises(InputError, match="not a COCO JSON"):
        ingest_path(ctx, project, path, fmt="coco")
    path.write_text('{"images": [], "annotations": []}')
    with pytest.raises(InputError, match="lists no images"):
        ingest_path(ctx, project, path)
    assert row_counts(ctx) == NOTHING


def test_a_category_id_listed_under_two_names_is_refused(ctx, tmp_path):
    """Which name id 1's annotations carry cannot be told: keeping either would relabel
    them without a word. The same entry twice is harmless and read."""
    doc = coco_doc()
    doc["categories"].append({"id": 1, "name": "WBC", "supercategory": ""})
    path = _write(tmp_path / "coco", doc)
    project = make_project(ctx, "smears", "segmentation", LABELS)
    with pytest.raises(InputError, match=r"categories list id 1 twice, as 'RBC' and 'WBC'") as err:
        ingest_path(ctx, project, path)
    assert err.value.file == str(path)
    assert row_counts(ctx) == NOTHING
    doc["categories"][-1]["name"] = "RBC"
    path.write_text(json.dumps(doc))
    assert ingest_path(ctx, project, path).shapes_per_class["RBC"] > 0


def test_an_annotation_written_twice_is_kept_with_a_warning_naming_it(ctx, tmp_path):
    """An export that repeats an annotation under a new id doubles that cell's count: both
    are kept (they may be two annotators' identical boxes), and the ingest says so."""
    doc = coco_doc()
    first = next(a for a in doc["annotations"] if a["id"] == 11)
    doc["annotations"] += [{**first, "id": 99}, {**first, "id": 98}]
    path = _write(tmp_path / "coco", doc)
    project = make_project(ctx, "smears", "segmentation", LABELS)
    report = ingest_path(ctx, project, path)
    assert report.shapes_per_class["WBC"] == 2 + 2  # ids 11, 98, 99 and the mask of image 1
    (repeat,) = [w for w in report.warnings if "exact repeat" in w]
    assert repeat.startswith(f"{path} image 2 'b.png'")
    assert "WBC box: 2 exact repeats of another" in repeat
    # A box moved by a pixel is another cell, even where clipping to the image makes the
    # two boxes one: no warning.
    doc["annotations"][-1]["bbox"] = [-6, 5, 16, 8]
    doc["annotations"][-2]["bbox"] = [-5, 5, 15, 8]
    path.write_text(json.dumps(doc))
    warned = ingest_path(ctx, project, path).warnings
    assert not [w for w in warned if "exact repeat" in w]
    assert len([w for w in warned if "box clipped" in w]) == 2


def test_crowds_and_pose_boxes_are_said_and_unnamed_points_refused(ctx, tmp_path):
    """A crowd region is several objects under one outline, and counted as one; a pose's
    bbox was dropped unseen; points of a category that names none became as many
    objects of the category, which is which lost."""
    doc = coco_doc()
    doc["categories"].append({"id": 4, "name": "cell", "keypoints": ["nucleus", "tail"]})
    pose = {"id": 20, "image_id": 3, "category_id": 4, "keypoints": [20, 20, 2, 40, 30, 2]}
    spans = {**pose, "id": 21, "keypoints": [5, 5, 2, 9, 9, 1], "bbox": [5, 5, 4, 4]}
    doc["annotations"] += [{**pose, "bbox": [10, 10, 40, 30]}, spans]
    path = _write(tmp_path / "coco", doc)
    project = make_project(ctx, "cells", "detection", [*LABELS, "nucleus", "tail"])
    report = ingest_path(ctx, project, path)
    assert report.shapes_per_class["nucleus"] == report.shapes_per_class["tail"] == 2
    said = sorted(w.removeprefix(f"{path}: ") for w in report.warnings if str(path) in w)
    assert said == [
        "image 1 'a.png' / annotation 12: an iscrowd region (several WBC objects under one "
        "outline) is kept as one object; counts and instance scores take it as one",
        "image 3 'c.png' / annotation 20: its bbox is left out; its 2 labelled keypoints are read",
    ]  # Label Studio's bbox that only spans the points (annotation 21) says nothing new
    doc["categories"][-1].pop("keypoints")
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="2 keypoints, but category 'cell' names none") as err:
        ingest_path(ctx, project, path)
    assert err.value.record == "image 3 'c.png' / annotation 20"


def test_an_image_declared_at_another_size_is_refused(ctx, tmp_path):
    doc = coco_doc()
    doc["images"][1].update(width=2 * W, height=2 * H)
    # Its boxes and polygons fit either size; an RLE's own size would be refused first.
    anns = doc["annotations"]
    doc["annotations"] = [
        a for a in anns if a["image_id"] != 2 or isinstance(a.get("segmentation"), list)
    ]
    path = _write(tmp_path / "coco", doc)
    project = make_project(ctx, "smears", "segmentation", LABELS)
    with pytest.raises(
        InputError, match=rf"gives its image as {2 * W}x{2 * H} but the image is {W}x{H}"
    ) as err:
        ingest_path(ctx, project, path)
    assert err.value.record == "image 2 'b.png'"
    assert row_counts(ctx) == NOTHING


def test_label_studio_coco_sample(ctx, tmp_path):
    """label-studio-sdk's own COCO import input: a polygon, and a two-part polygon whose
    bbox/area describe only its first part; the parts become one mask (one object)."""
    src = require_shared_data(
        "exports",
        "label-studio",
        "sdk-converter-tests",
        "test_import_coco",
        "coco_import_input.json",
    )
    folder = tmp_path / "ls-coco"
    folder.mkdir()
    shutil.copy(src, folder / "coco_import_input.json")
    (folder / "image1.jpg").write_bytes(_jpeg(4022, 6033))
    (folder / "image2.jpg").write_bytes(_jpeg(7050, 4702))
    project = make_project(ctx, "ls-coco", "segmentation", ["Class_1", "Class_2"])
    report = ingest_path(ctx, project, folder)
    assert report.format == "coco" and report.records == 2
    assert report.shapes_per_class == {"Class_1": 1, "Class_2": 1}
    assert report.shapes_per_kind == {"polygon": 1, "mask": 1}
    doc = json.loads(src.read_text())
    parts = doc["annotations"][1]["segmentation"]
    mask = next(s for s in shapes_from_json(active_shapes(ctx)) if s.kind == "mask")
    assert tuple(mask.size) == (4702, 7050)
    pixels = decode_mask(mask.size, mask.counts)
    expected = mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(parts, 4702, 7050)))
    assert int(pixels.sum()) == int(expected) > doc["annotations"][1]["area"]
    assert ndimage.label(pixels[1300:1800, 4700:5200])[1] == 2


def test_label_studio_converter_output(ctx, tmp_path, monkeypatch):
    """Label Studio's own COCO exporter (label-studio-sdk Converter) on its test export:
    a box, a polygon, and two point labels under its merged keypoint category."""
    from label_studio_sdk.converter import Converter

    src = require_shared_data("exports", "label-studio", "sdk-converter-tests", "test_export_coco")
    monkeypatch.chdir(tmp_path)
    converter = Converter(
        (src / "label_config.xml").read_text(), str(src), download_resources=False
    )
    converter.convert_to_coco(str(src / "data.json"), str(tmp_path / "out"), is_dir=False)
    result = tmp_path / "out" / "result.json"
    image = json.loads(result.read_text())["images"][0]
    (tmp_path / "out" / image["file_name"]).write_bytes(_jpeg(image["width"], image["height"]))
    labels = ["rectangle_label", "polygon_label", "keypoint_label1", "keypoint_label2"]
    project = make_project(ctx, "ls-export", "detection", labels)
    report = ingest_path(ctx, project, tmp_path / "out")
    assert report.format == "coco"
    assert report.shapes_per_class == {label: 1 for label in labels}
    assert report.shapes_per_kind == {"box": 1, "polygon": 1, "keypoint": 2}
    shapes = {s.label: s for s in shapes_from_json(active_shapes(ctx))}
    assert (shapes["keypoint_label1"].x, shapes["keypoint_label1"].y) == (113.0, 102.0)
    assert shapes["keypoint_label2"].attributes["category"] == "default"
    assert shapes["rectangle_label"].x == pytest.approx(159.70961887477313)


def test_memory_stays_flat_on_a_large_file(tmp_path):
    """Annotations shuffled across images, as COCO files often are: the reader spills them
    to disk, so its peak stays far below the file (measured: ~1.5 MB for 10 MB, most of it
    the 1 MB insert batch), where grouping them in memory would hold all of it."""
    rng = random.Random(0)
    n_images, per_image = 500, 8
    images = [{"id": i, "file_name": "a.png", "width": W, "height": H} for i in range(n_images)]
    anns = [
        {
            "id": k,
            "image_id": k % n_images,
            "category_id": 1,
            "segmentation": [],
            "bbox": [15, 9, 30, 30],
            "metadata": {"note": f"{k:06d}" * 400},  # bulk the reader reads and drops
        }
        for k in range(n_images * per_image)
    ]
    rng.shuffle(anns)
    path = tmp_path / "big.json"
    path.write_text(
        json.dumps(
            {"categories": [{"id": 1, "name": "RBC"}], "images": images, "annotations": anns}
        )
    )
    (tmp_path / "a.png").write_bytes(png())
    del anns
    size = path.stat().st_size
    reader = formats()["coco"]  # the readers' imports are not the reader's memory
    tracemalloc.start()
    boxes = 0
    for rec in reader.read(path, ReadOptions()):
        assert rec.error is None
        boxes += len(rec.annotations[0].shapes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert boxes == n_images * per_image
    assert size > 9_000_000 and peak < 3_000_000


def test_detect_is_strict(tmp_path):
    coco = formats()["coco"]
    ls = tmp_path / "export.json"
    ls.write_text('[{"data": {"image": "a.png"}}]')
    datumaro = tmp_path / "default.json"
    datumaro.write_text('{"info": {}, "categories": {"label": {"labels": []}}, "items": []}')
    assert not coco.detect(ls) and not coco.detect(datumaro) and not coco.detect(tmp_path)
    path = _write(tmp_path / "coco", coco_doc())
    assert coco.detect(path) and coco.detect(tmp_path / "coco")


VALID = json.dumps(coco_doc()).encode()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=mutated(VALID))
def test_fuzz_mutated_json_only_raises_input_error(tmp_path, data):
    path = _write(tmp_path / "coco", coco_doc())
    path.write_bytes(data)
    read_all("coco", path)  # asserts every error is an InputError


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_only_raise_input_error(tmp_path, data):
    path = tmp_path / "instances.json"
    path.write_bytes(b'{"images": [' + data)
    read_all("coco", path)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for k, v in items:
        out += _paths(v, (*prefix, k))
    return out


@st.composite
def _retyped_doc(draw) -> bytes:
    """The valid document with up to three values anywhere replaced by any JSON value."""
    doc = coco_doc()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(coco_doc())[1:]))
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = draw(_JSON)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier replacement removed this branch
    return json.dumps(doc).encode()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=_retyped_doc())
def test_fuzz_retyped_values_only_raise_input_error(tmp_path, data):
    path = _write(tmp_path / "coco", coco_doc())
    path.write_bytes(data)
    read_all("coco", path)


def test_a_number_beyond_any_float_in_a_damaged_file_is_an_input_error(tmp_path):
    """Found by the fuzz test: locating the damaged section read numbers as Decimal, and an
    exponent past Decimal's range escaped as decimal.InvalidOperation."""
    path = _write(tmp_path / "coco", coco_doc())
    text = VALID.decode().replace('"smears"', "1e999999999999999999999", 1)
    path.write_text(text[:-40])  # and the file breaks off
    with pytest.raises(InputError, match="invalid or truncated JSON"):
        for rec in formats()["coco"].read(path, ReadOptions()):
            if rec.error is not None:
                raise rec.error
