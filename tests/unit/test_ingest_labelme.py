"""LabelMe JSON ingest end to end: every shape type, embedded images, and broken files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from sqlalchemy import select

from labelloop.db.models import Image
from labelloop.errors import InputError
from labelloop.geometry import decode_mask
from labelloop.ingest import ingest_path
from labelloop.ingest.formats import detect_format
from tests.factories import png
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


def _mask_b64(region: np.ndarray) -> str:
    buf = io.BytesIO()
    PILImage.fromarray(region.astype(np.uint8)).save(buf, format="PNG")  # 0/1, as LabelMe
    return base64.b64encode(buf.getvalue()).decode()


def shape(label: str, kind: str, points: list, **extra) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": None,
        "description": "",
        "shape_type": kind,
        "flags": {},
        "mask": None,
        **extra,
    }


def labelme(image_path: str, shapes: list[dict], *, data: str | None = None, size=(64, 48)):
    return {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": data,
        "imageHeight": size[1],
        "imageWidth": size[0],
    }


REGION = np.zeros((6, 8), dtype=bool)
REGION[1:5, 2:7] = True  # 20 pixels
ALL_KINDS = [
    shape("RBC", "rectangle", [[30, 20], [10, 4]]),
    shape("WBC", "polygon", [[40, 10], [60, 10], [60, 30], [40, 30]], group_id=3),
    shape("Platelets", "circle", [[20, 30], [23, 34]]),
    shape("Platelets", "point", [[5, 5]]),
    shape("RBC", "line", [[1, 1], [9, 9]]),
    shape("RBC", "linestrip", [[1, 1], [9, 9], [5, 2]]),
    shape("RBC", "mask", [[50, 40], [57, 45]], mask=_mask_b64(REGION)),
]


@pytest.fixture
def project(ctx):
    return make_project(ctx, "cells", "segmentation", CELLS)


def _write(folder: Path, name: str, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def test_every_shape_type(ctx, project, tmp_path):
    (tmp_path / "a.png").write_bytes(png(seed=1))
    _write(tmp_path, "a.json", labelme("a.png", ALL_KINDS))
    assert detect_format(tmp_path) == "labelme"
    report = ingest_path(ctx, project, tmp_path)
    assert (report.format, report.records, report.annotations_new) == ("labelme", 1, 1)
    assert report.shapes_per_kind == {
        "box": 1,
        "polygon": 1,
        "ellipse": 1,
        "keypoint": 1,
        "mask": 1,
    }
    shapes = {s["kind"]: s for s in active_shapes(ctx)}
    box = shapes["box"]
    assert (box["x"], box["y"], box["w"], box["h"]) == (10, 4, 20, 16)
    assert shapes["polygon"]["attributes"] == {"group_id": 3}
    assert (shapes["ellipse"]["rx"], shapes["ellipse"]["ry"]) == (5, 5)
    mask = decode_mask(shapes["mask"]["size"], shapes["mask"]["counts"])
    assert mask.shape == (48, 64) and mask.sum() == 20
    assert mask[41:45, 52:57].all()  # the region's (1:5, 2:7) at corner (50, 40)
    assert item_meta(ctx)["a"]["ignored_shapes"] == {"line": 1, "linestrip": 1}
    # Lines are left out with a word, never unseen.
    assert [w for w in report.warnings if "left out" in w] == [
        f"{tmp_path / 'a.json'} (image a): 1 line, 1 linestrip shape(s) left out "
        "(lines outline no region and count no cell)"
    ]


def test_one_object_drawn_in_pieces_counts_once(ctx, project, tmp_path):
    """LabelMe groups the pieces of one object with a `group_id` (a cell cut in two by
    another lying over it), and one drawn mask may fall in two parts: both counted as
    many cells as pieces."""
    from labelloop.domain import shapes_from_json
    from labelloop.objects import object_counts

    two_blobs = np.zeros((6, 8), dtype=bool)
    two_blobs[1:3, 1:3] = two_blobs[4:6, 5:8] = True
    pieces = [
        shape("WBC", "polygon", [[2, 2], [10, 2], [10, 10], [2, 10]], group_id=7),
        shape("WBC", "polygon", [[14, 2], [22, 2], [22, 10], [14, 10]], group_id=7),
        shape("WBC", "polygon", [[40, 30], [50, 30], [50, 40]], group_id=8),  # alone
        shape("RBC", "polygon", [[30, 2], [38, 2], [38, 10]], group_id=7),  # another label
        shape("RBC", "mask", [[50, 40], [57, 45]], mask=_mask_b64(two_blobs)),
    ]
    (tmp_path / "a.png").write_bytes(png(seed=1))
    _write(tmp_path, "a.json", labelme("a.png", pieces))
    ingest_path(ctx, project, tmp_path)
    shapes = shapes_from_json(active_shapes(ctx))
    assert object_counts(shapes, ["RBC", "WBC"], ["polygon", "mask"]) == {"RBC": 2, "WBC": 2}
    joined = next(s for s in shapes if s.label == "WBC" and s.kind == "mask")
    assert joined.attributes == {"group_id": 7, "whole_object": True, "pieces": 2}
    assert decode_mask(joined.size, joined.counts).sum() == 2 * 64  # both 8x8 squares
    # What any piece says is the object's; where pieces disagree the first stands, said.
    marked = [
        {**pieces[0], "description": "nucleus cut"},
        {**pieces[1], "description": "second part", "flags": {"blurred": True}},
    ]
    _write(tmp_path, "a.json", labelme("a.png", marked))
    report = ingest_path(ctx, project, tmp_path)
    joined = next(s for s in shapes_from_json(active_shapes(ctx)) if s.kind == "mask")
    assert joined.attributes == {
        "group_id": 7,
        "description": "nucleus cut",
        "blurred": True,
        "whole_object": True,
        "pieces": 2,
    }
    assert [w.split(": ", 1)[1] for w in report.warnings if "group 7" in w] == [
        "the pieces disagree; kept the first piece's value, left out description 'second part'"
    ]
    # A piece cut at the edge is said; pieces all outside, or an erased mask, are refused.
    edge = [{**pieces[0], "points": [[-4, 2], [10, 2], [10, 10], [-4, 10]]}, pieces[1]]
    _write(tmp_path, "a.json", labelme("a.png", edge))
    report = ingest_path(ctx, project, tmp_path)
    assert [w.split(": ", 1)[1] for w in report.warnings if "group 7" in w] == [
        "a piece was clipped to the image"
    ]
    outside = [{**p, "points": [[x + 100, y] for x, y in p["points"]]} for p in pieces[:2]]
    for shapes, why in [
        (outside, "the 2 pieces of group 7 have no area inside the image"),
        ([shape("RBC", "mask", [[50, 40], [57, 45]], mask=_mask_b64(0 * two_blobs))], "empty"),
    ]:
        _write(tmp_path, "a.json", labelme("a.png", shapes))
        with pytest.raises(InputError, match=why):
            ingest_path(ctx, project, tmp_path)


def test_embedded_image_data_when_the_file_is_absent(ctx, project, tmp_path):
    data = png(seed=4)
    doc = labelme("gone/a.png", [ALL_KINDS[0]], data=base64.b64encode(data).decode())
    _write(tmp_path / "ann", "a.json", doc)
    report = ingest_path(ctx, project, tmp_path / "ann")
    assert report.images_new == 1
    with ctx.db.session() as s:
        assert s.scalar(select(Image.sha256)) == hashlib.sha256(data).hexdigest()
    assert item_meta(ctx)["a"]["image_path"] == "embedded imageData"


def test_windows_image_path_outside_the_json_folder_needs_image_root(ctx, project, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(seed=2))
    _write(tmp_path / "ann", "a.json", labelme("..\\images\\a.png", [ALL_KINDS[0]]))
    with pytest.raises(InputError, match=r"pass --image-root"):
        ingest_path(ctx, project, tmp_path / "ann")
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, tmp_path / "ann", image_root=tmp_path)
    assert report.annotations_new == 1


def test_a_single_json_file(ctx, project, tmp_path):
    (tmp_path / "a.png").write_bytes(png(seed=1))
    path = _write(tmp_path, "a.json", labelme("a.png", ALL_KINDS[:2]))
    assert detect_format(path) == "labelme"
    assert ingest_path(ctx, project, path).shapes_per_class == {"RBC": 1, "WBC": 1}


@pytest.mark.parametrize(
    ("bad", "record", "reason"),
    [
        (shape("RBC", "polygon", [[1, 1], [5, 5]]), "shape 1 (RBC)", "needs at least 3 points"),
        (shape("RBC", "cuboid", [[1, 1]]), "shape 1 (RBC)", "unsupported shape_type 'cuboid'"),
        (shape("RBC", "circle", [[9, 9], [9, 9]]), "shape 1 (RBC)", "zero radius"),
        (shape("", "point", [[9, 9]]), "shape 1", "shape has no label"),
        (shape("RBC", "point", [["x", 9]]), "shape 1 (RBC)", "x 'x' is not a number"),
        (
            shape("RBC", "mask", [[60, 45], [67, 50]], mask=_mask_b64(REGION)),
            "shape 1 (RBC)",
            "does not fit the 64x48 image",
        ),
    ],
)
def test_bad_shapes_name_file_shape_and_reason(ctx, project, tmp_path, bad, record, reason):
    for name in ("a", "b"):
        (tmp_path / f"{name}.png").write_bytes(png(seed=ord(name)))
    _write(tmp_path, "a.json", labelme("a.png", [ALL_KINDS[0]]))
    _write(tmp_path, "b.json", labelme("b.png", [bad]))
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, tmp_path)
    assert err.value.file.endswith("b.json")
    assert err.value.record == f"image b / {record}"
    assert reason in err.value.reason
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, tmp_path, skip_invalid=True)
    assert report.annotations_new == 1 and len(report.skipped) == 1


def test_file_level_defects_are_record_errors(ctx, project, tmp_path):
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.png").write_bytes(png(seed=ord(name)))
    _write(tmp_path, "a.json", labelme("a.png", [ALL_KINDS[0]]))
    truncated = json.dumps(labelme("b.png", ALL_KINDS))[:-30]
    (tmp_path / "b.json").write_text(truncated)
    _write(tmp_path, "c.json", labelme("c.png", [ALL_KINDS[0]], size=(640, 480)))
    _write(tmp_path, "d.json", labelme("../../etc/d.png", [ALL_KINDS[0]]))
    (tmp_path / "d.png").unlink()
    (tmp_path / "e.json").write_text('{"not": "labelme"}')
    report = ingest_path(ctx, project, tmp_path, skip_invalid=True)
    assert report.annotations_new == 1
    reasons = {s.record: s.reason for s in report.skipped}
    assert reasons["image b"].startswith("invalid JSON")
    assert "say 640x480 but the image is 64x48" in reasons["image c"]
    assert "not found next to the JSON" in reasons["image d"]
    assert "not a LabelMe file" in reasons["image e"]


def test_reingest_is_idempotent(ctx, project, tmp_path):
    (tmp_path / "a.png").write_bytes(png(seed=1))
    _write(tmp_path, "a.json", labelme("a.png", ALL_KINDS))
    ingest_path(ctx, project, tmp_path)
    before = row_counts(ctx)
    again = ingest_path(ctx, project, tmp_path)
    assert (again.annotations_new, again.annotations_unchanged) == (0, 1)
    assert row_counts(ctx) == before


_VALID = json.dumps(labelme("a.png", ALL_KINDS), indent=1).encode()


def _fuzz(doc: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a.png").write_bytes(png())
        (root / "a.json").write_bytes(doc)
        read_all("labelme", root)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_only_raise_input_errors(data):
    _fuzz(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(_VALID))
def test_fuzz_mutated_json_only_raises_input_errors(data):
    _fuzz(data)


def _jpeg(seed: int, size=(121, 91), quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), 200, np.uint8)
    pixels[10:60, 20:90] = rng.integers(0, 255, 3, dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _tutorial(folder: Path, *, embedded: bytes, beside: bytes | None, image_path: str) -> Path:
    """labelme's examples/tutorial/apc2016_obj3.json as the repository keeps it: LabelMe 3
    keys (no shape_type, per-shape line_color/fill_color, file-level lineColor and
    fillColor), `imageData` embedding the JPEG, `imagePath` naming the JSON itself, and
    apc2016_obj3.jpg beside it. The pixels are smaller here, the layout is the file's."""

    def poly(label, pts):
        return {"label": label, "line_color": None, "fill_color": None, "points": pts}

    doc = {
        "shapes": [
            poly("shelf", [[0.79, 7.98], [17.19, 71.38], [96.89, 73.28], [118.19, 10.98]]),
            poly("mead_index_cards", [[44.71, 39.46], [41.05, 48.09], [73.21, 52.80]]),
        ],
        "lineColor": [0, 255, 0, 128],
        "fillColor": [255, 0, 0, 128],
        "imagePath": image_path,
        "imageData": base64.b64encode(embedded).decode(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "apc2016_obj3.json").write_text(json.dumps(doc, indent=2))
    if beside is not None:
        (folder / "apc2016_obj3.jpg").write_bytes(beside)
    return folder


@pytest.mark.parametrize("image_path", ["apc2016_obj3.json", "apc2016_obj3.jpg"])
def test_labelme_tutorial_file_reads_the_image_beside_it(ctx, tmp_path, image_path):
    make_project(ctx, "apc", "segmentation", ["shelf", "mead_index_cards"])
    jpeg = _jpeg(0)
    folder = _tutorial(tmp_path / "tutorial", embedded=jpeg, beside=jpeg, image_path=image_path)
    report = ingest_path(ctx, "apc", folder)
    assert (report.format, report.images_new, report.shapes_per_kind) == (
        "labelme",
        1,
        {"polygon": 2},
    )
    with ctx.db.session() as s:
        assert s.scalar(select(Image.sha256)) == hashlib.sha256(jpeg).hexdigest()
    assert item_meta(ctx)["apc2016_obj3"]["image_path"] == str(folder / "apc2016_obj3.jpg")


def test_labelme_embedded_image_re_encoded_still_agrees(ctx, tmp_path):
    """LabelMe re-encodes the image it embeds: other bytes, the same picture. The file
    beside the JSON is read."""
    make_project(ctx, "apc", "segmentation", ["shelf", "mead_index_cards"])
    beside = _jpeg(0)
    folder = _tutorial(
        tmp_path / "t", embedded=_jpeg(0, quality=75), beside=beside, image_path="x.jpg"
    )
    assert ingest_path(ctx, "apc", folder).images_new == 1
    with ctx.db.session() as s:
        assert s.scalar(select(Image.sha256)) == hashlib.sha256(beside).hexdigest()


@pytest.mark.parametrize(
    ("embedded", "reason"),
    [
        (_jpeg(1), r"differs from the image embedded in imageData"),
        (_jpeg(0, size=(60, 45)), r"embedded in imageData is 60x45 but apc2016_obj3\.jpg"),
    ],
)
def test_labelme_embedded_image_that_differs_from_the_file_is_refused(
    ctx, tmp_path, embedded, reason
):
    make_project(ctx, "apc", "segmentation", ["shelf", "mead_index_cards"])
    folder = _tutorial(
        tmp_path / "t", embedded=embedded, beside=_jpeg(0), image_path="apc2016_obj3.jpg"
    )
    with pytest.raises(InputError, match=reason) as err:
        ingest_path(ctx, "apc", folder)
    assert err.value.file.endswith("apc2016_obj3.json") and err.value.record == "image apc2016_obj3"
    assert row_counts(ctx) == NOTHING
