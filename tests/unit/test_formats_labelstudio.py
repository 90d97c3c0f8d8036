"""Label Studio converters against real exports and their failure modes."""

from __future__ import annotations

import json
import math
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from labelloop.domain import (
    Box,
    Ellipse,
    Keypoint,
    Mask,
    Polygon,
    Tag,
    shapes_json_text,
    shapes_to_json,
    trusted_shape,
)
from labelloop.errors import ConfigError, InputError
from labelloop.geometry import decode_mask, mask_shape
from labelloop.labelstudio import convert
from labelloop.labelstudio.convert import (
    decode_brush,
    encode_brush,
    results_to_shapes,
    shapes_to_results,
)
from labelloop.labelstudio.export import (
    LocalImages,
    image_reference,
    iter_export_tasks,
    resolve_local_image,
    task_annotations,
)
from labelloop.labelstudio.label_config import (
    DEFAULT_CONTROLS,
    label_config_xml,
    parse_label_config,
)
from tests.support import require_shared_data

LS = ("exports", "label-studio")
W, H = 173, 97  # not square, so a swapped width/height shows


def _shapes_of(path: Path, config=None, image_size=None) -> list:
    out = []
    for task in iter_export_tasks(path):
        for ann in task_annotations(task, config):
            out += results_to_shapes(
                ann.results, file=str(path), record=ann.record, image_size=image_size
            )
    return out


def _counts(shapes) -> Counter:
    return Counter((s.kind, s.label) for s in shapes)


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# --- round trips -----------------------------------------------------------------------


def _sample_shapes() -> list:
    mask = _disc(H, W, 60, 40, 17) & ~_disc(H, W, 66, 40, 5)  # a ring: holes must survive
    return [
        Box(label="RBC", x=10.25, y=5.5, w=30.125, h=20.75, rotation=33.0),
        Polygon(label="Platelets", points=[(1.5, 2.25), (90.0, 3.0), (172.9, 96.5), (4.0, 80.0)]),
        mask_shape(mask, "WBC"),
        Keypoint(label="RBC", x=100.5, y=0.25),
        Ellipse(label="WBC", x=120.0, y=50.0, rx=12.5, ry=7.25, rotation=-15.0),
        Tag(label="RBC"),
        Tag(label="WBC"),
    ]


def test_round_trip_every_kind_within_tolerance():
    shapes = _sample_shapes()
    controls = {**DEFAULT_CONTROLS}
    results = shapes_to_results(shapes, W, H, controls=controls)
    for r in results:
        assert r["id"] and r["original_width"] == W and r["original_height"] == H
        assert r["image_rotation"] == 0 and r["to_name"] == "image"
        assert (
            r["from_name"]
            == controls[
                {
                    "rectanglelabels": "box",
                    "polygonlabels": "polygon",
                    "brushlabels": "mask",
                    "keypointlabels": "keypoint",
                    "ellipselabels": "ellipse",
                    "choices": "tag",
                }[r["type"]]
            ]
        )
    assert len({r["id"] for r in results}) == len(results) == 6  # both tags share one result
    back = results_to_shapes(results, file="mem", record="round trip")
    assert [s.kind for s in back] == ["box", "polygon", "mask", "keypoint", "ellipse", "tag", "tag"]
    for a, b in zip(shapes, back, strict=True):
        assert a.label == b.label
        if isinstance(a, Mask):
            assert tuple(b.size) == (H, W)
            assert np.array_equal(decode_mask(a.size, a.counts), decode_mask(b.size, b.counts))
        elif isinstance(a, Polygon):
            assert np.allclose(a.points, b.points, rtol=0, atol=1e-6)
        elif not isinstance(a, Tag):
            da, db = a.model_dump(exclude={"attributes"}), b.model_dump(exclude={"attributes"})
            for key, v in da.items():
                expected = pytest.approx(v, abs=1e-6) if isinstance(v, float) else v
                assert db[key] == expected, key
    # ids survive a second trip, so results -> shapes -> results is stable
    again = shapes_to_results(back, W, H, controls=controls)
    assert [r["id"] for r in again] == [r["id"] for r in results]


def test_round_trip_keeps_scores_and_rejects_unmapped_kinds():
    box = Box(label="RBC", x=1, y=2, w=3, h=4, attributes={"score": 0.25})
    (res,) = shapes_to_results([box], W, H, controls={"box": "b"})
    assert res["score"] == 0.25 and res["from_name"] == "b"
    assert results_to_shapes([res], file="f", record="r")[0].attributes["score"] == 0.25
    with pytest.raises(ConfigError, match="polygon"):
        shapes_to_results([Polygon(label="x", points=[])], W, H, controls={"box": "b"})
    with pytest.raises(InputError, match="does not match"):
        shapes_to_results([mask_shape(np.ones((5, 5), bool), "x")], W, H, controls=DEFAULT_CONTROLS)


def test_brush_codec_is_label_studio_rgba_and_exact():
    mask = _disc(H, W, 30, 30, 11)
    rle = encode_brush(mask)
    assert int.from_bytes(bytes(rle[:4]), "big") == W * H * 4
    assert np.array_equal(decode_brush(rle, W, H), mask)
    # a layer written with 0/1 alpha (mask2rle on a 0/1 mask) still decodes
    from label_studio_sdk.converter.brush import mask2rle

    assert np.array_equal(decode_brush(mask2rle(mask.astype(np.uint8)), W, H), mask)


def test_label_config_xml_parses_back_with_colours():
    labels = ["RBC", "WBC", "Platelets", "Blast & co"]
    xml = label_config_xml(labels, ["box", "polygon", "mask", "tag"])
    cfg = parse_label_config(xml)
    assert cfg.image_names == ["image"] and cfg.images[0].data_key == "image"
    assert [(c.name, c.type, c.to_name) for c in cfg.controls] == [
        ("box", "RectangleLabels", "image"),
        ("poly", "PolygonLabels", "image"),
        ("brush", "BrushLabels", "image"),
        ("class", "Choices", "image"),
    ]
    assert all(c.labels == ("RBC", "WBC", "Platelets", "Blast & co") for c in cfg.controls)
    assert 'value="RBC" background="#e53935"' in xml
    assert 'value="WBC" background="#8e24aa"' in xml
    assert 'value="Platelets" background="#fb8c00"' in xml
    with pytest.raises(ConfigError):
        label_config_xml(["a"], ["cube"])
    with pytest.raises(ConfigError):
        label_config_xml(["a", "a"], ["box"])


def test_parse_label_config_refuses_bad_and_hostile_xml():
    with pytest.raises(InputError, match="invalid labeling config"):
        parse_label_config("<View><Image name='image' value='$image'></View>")
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><View><Header value="&b;"/></View>'
    )
    with pytest.raises(InputError):
        parse_label_config(bomb)
    with pytest.raises(InputError, match="no name"):
        parse_label_config("<View><RectangleLabels toName='image'/></View>")


# --- real exports ----------------------------------------------------------------------


def test_frontend_configs_parse():
    root = require_shared_data(*LS, "frontend-examples")
    tools = parse_label_config((root / "image_tools" / "config.xml").read_text())
    assert tools.image_names == ["image"]
    assert [(c.name, c.type) for c in tools.controls] == [
        ("rect", "Rectangle"),
        ("ellipse", "Ellipse"),
        ("kp", "KeyPoint"),
        ("polygon", "Polygon"),
        ("brush", "Brush"),
        ("labels", "Labels"),
        ("rectangle-labels", "RectangleLabels"),
    ]
    assert tools.control("labels").labels == ("Planet", "Moonwalker")
    ell = parse_label_config((root / "image_ellipses" / "config.xml").read_text())
    assert ell.control("choice").labels == ("Space", "Underground")
    assert ell.control("tag").to_name == "img" and ell.control("tag").result_type == "ellipselabels"
    wand = parse_label_config((root / "image_magic_wand" / "config.xml").read_text())
    assert wand.image_names == ["image_1"]
    assert wand.control("labels_1").labels == ("Snow", "Cloud Shadow", "Haze", "Cloud", "Exclude")


def test_frontend_examples_without_sizes_need_one():
    root = require_shared_data(*LS, "frontend-examples")
    path = root / "image_bbox" / "annotations" / "1.json"
    with pytest.raises(InputError) as err:
        _shapes_of(path)
    assert err.value.file == str(path)
    assert err.value.record == "task 1 / annotation 1001 / result Dx_aB91ISN"
    assert "original_width" in err.value.reason
    (box,) = _shapes_of(path, image_size=(1000, 500))
    assert (box.label, box.x, box.y, box.w, box.h) == (
        "Moonwalker",
        pytest.approx(508.0),
        pytest.approx(29.34898612593383),
        pytest.approx(124.0),
        pytest.approx(52.294557097118465),
    )
    ellipses = _shapes_of(root / "image_ellipses" / "annotations" / "1.json", image_size=(800, 600))
    assert _counts(ellipses) == {("ellipse", "Planet"): 1, ("tag", "Space"): 1}
    assert _counts(
        _shapes_of(root / "image_keypoints" / "annotations" / "0.json", image_size=(800, 501))
    ) == {("keypoint", "Hello"): 1, ("keypoint", "World"): 1}
    (poly,) = _shapes_of(root / "image_polygons" / "annotations" / "0.json", image_size=(750, 674))
    assert poly.label == "Hello" and len(poly.points) == 4
    assert poly.points[0] == pytest.approx((204.0, 277.9999999999999))


def test_frontend_image_tools_generic_labels():
    root = require_shared_data(*LS, "frontend-examples")
    shapes = _shapes_of(root / "image_tools" / "annotations" / "1.json")
    # tool regions are labelled by their paired `labels` result; relations are ignored
    assert _counts(shapes) == {
        ("box", "Moonwalker"): 3,
        ("box", "Planet"): 1,
        ("ellipse", "Moonwalker"): 1,
        ("keypoint", "Moonwalker"): 3,
        ("polygon", "Planet"): 1,
        ("mask", "Planet"): 1,
    }
    (mask,) = [s for s in shapes if s.kind == "mask"]
    assert tuple(mask.size) == (2802, 2242) and decode_mask(mask.size, mask.counts).sum() == 57608


def test_frontend_brush_exports():
    root = require_shared_data(*LS, "frontend-examples")
    wand = _shapes_of(root / "image_magic_wand" / "annotations" / "1.json")
    assert [(s.kind, s.label) for s in wand] == [("mask", "Cloud"), ("mask", "Cloud Shadow")]
    assert [int(decode_mask(s.size, s.counts).sum()) for s in wand] == [381431, 261525]
    seg = root / "image_segmentation" / "annotations" / "1.json"
    with pytest.raises(InputError, match="original_width"):
        _shapes_of(seg)
    with pytest.raises(InputError, match="needs 25128000"):  # wrong size: RLE length mismatch
        _shapes_of(seg, image_size=(2000, 3141))
    (planet,) = _shapes_of(seg, image_size=(2242, 2802))
    assert planet.label == "Planet" and decode_mask(planet.size, planet.counts).sum() == 253348


def test_sdk_brush_png_through_image2annotation():
    png = require_shared_data(*LS, "sdk-converter-tests", "test_brush", "test.png")
    from label_studio_sdk.converter.brush import image2annotation

    ann = image2annotation(str(png), "Planet", "brush", "image")
    (shape,) = results_to_shapes(ann["result"], file=str(png), record="brush")
    expected = np.asarray(Image.open(png).convert("L")) > 128
    assert shape.label == "Planet" and tuple(shape.size) == (427, 640)
    assert np.array_equal(decode_mask(shape.size, shape.counts), expected)
    assert int(expected.sum()) == 86802


def test_sdk_export_coco_values_in_pixels():
    path = require_shared_data(*LS, "sdk-converter-tests", "test_export_coco", "data.json")
    box, poly, kp1, kp2 = _shapes_of(path)
    assert isinstance(box, Box) and box.label == "rectangle_label"
    assert (box.x, box.y, box.w, box.h) == (
        pytest.approx(159.70961887477314),
        pytest.approx(13.163120567375885),
        pytest.approx(31.76043557168784),
        pytest.approx(31.773049645390074),
    )
    assert box.attributes["ls_id"] == "G1wj68-AlF"
    assert poly.label == "polygon_label" and poly.points[2] == pytest.approx(
        (226.86025408348456, 39.94326241134752)
    )
    assert (kp1.label, kp1.x, kp1.y) == (
        "keypoint_label1",
        pytest.approx(112.97640653357533),
        pytest.approx(101.67375886524823),
    )
    assert kp2.label == "keypoint_label2"


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("test_export_yolo", "data.json"), {("box", "parasites"): 2, ("box", "white"): 4}),
        (
            ("test_export_yolo", "data_obb.json"),
            {("box", "Butterfly"): 24, ("box", "butterfly"): 1},
        ),
        (
            ("test_export_yolo", "data_keypoints.json"),
            {
                ("keypoint", "nose"): 1,
                ("keypoint", "left_eye"): 1,
                ("keypoint", "right_eye"): 1,
                ("box", "person"): 1,
            },
        ),
        (("test_export_yolo", "data_polygons.json"), {("polygon", "Airplane"): 1}),
        (("test_export_json_min", "data.json"), {("polygon", "Airplane"): 1}),
        (("test_export_csv", "csv_test.json"), {("box", "Car"): 3}),
        (("test_export_csv", "csv_test_history.json"), {("tag", "Positive"): 1}),
    ],
)
def test_sdk_exports_shape_counts(parts, expected):
    path = require_shared_data(*LS, "sdk-converter-tests", *parts)
    assert _counts(_shapes_of(path)) == expected


def test_sdk_exports_keep_rotation_and_scores():
    root = require_shared_data(*LS, "sdk-converter-tests")
    obb = _shapes_of(root / "test_export_yolo" / "data_obb.json")
    assert obb[0].rotation == pytest.approx(328.3, abs=0.05) and obb[0].attributes["ls_id"]
    cars = _shapes_of(root / "test_export_csv" / "csv_test.json")
    assert [s.attributes.get("score") for s in cars] == [
        pytest.approx(0.23053804129850775),
        pytest.approx(0.2962464632651445),
        None,
    ]


def test_doclang_boxes_without_sizes_name_the_record():
    path = require_shared_data(*LS, "sdk-converter-tests", "test_export_doclang", "data.json")
    with pytest.raises(InputError) as err:
        _shapes_of(path)
    assert err.value.record == "task 1 / annotation 11 / result sec-1"
    assert _counts(_shapes_of(path, image_size=(1000, 1000))) == {
        ("box", "Section-header"): 1,
        ("box", "Text"): 1,
    }  # text areas are ignored


def test_json_min_matches_full_export(tmp_path):
    root = require_shared_data(*LS, "sdk-converter-tests")
    from label_studio_sdk.converter import Converter

    for sub, cfg_name, data_name in [
        ("test_export_coco", "label_config.xml", "data.json"),
        ("test_export_yolo", "label_config_keypoints.xml", "data_keypoints.json"),
        ("test_export_yolo", "label_config.xml", "data.json"),
    ]:
        xml = (root / sub / cfg_name).read_text()
        out = tmp_path / f"{sub}-{data_name}"
        Converter(config=xml, project_dir=None).convert_to_json_min(
            str(root / sub / data_name), str(out), is_dir=False
        )
        config = parse_label_config(xml)
        full = _shapes_of(root / sub / data_name)
        mini = _shapes_of(out / "result.json", config)
        strip = [s.model_dump(exclude={"attributes"}) for s in full]
        assert sorted(map(json.dumps, strip)) == sorted(
            json.dumps(s.model_dump(exclude={"attributes"})) for s in mini
        )
        assert (
            len(mini)
            == {"data.json": 4 if sub == "test_export_coco" else 6, "data_keypoints.json": 4}[
                data_name
            ]
        )


def test_json_min_needs_the_config(tmp_path):
    path = tmp_path / "min.json"
    path.write_text(json.dumps([{"image": "a.png", "id": 1, "label": [], "annotation_id": 2}]))
    with pytest.raises(InputError, match="labeling config"):
        _shapes_of(path)


def test_image_reference():
    path = require_shared_data(*LS, "sdk-converter-tests", "test_export_json_min", "data.json")
    (task,) = list(iter_export_tasks(path))
    assert image_reference(task) == "/data/upload/29/example.png"
    assert image_reference({"id": 1, "img": "x.png"}, "img") == "x.png"  # JSON-MIN row
    with pytest.raises(InputError, match=r"data\.picture"):
        image_reference(task, "picture")


# --- streaming and broken files ----------------------------------------------------------


def test_iter_export_streams_with_flat_memory(tmp_path):
    path = tmp_path / "big.json"
    task = {
        "id": 0,
        "data": {"image": "x.png"},
        "annotations": [
            {
                "id": 1,
                "result": [
                    {
                        "id": "a",
                        "type": "polygonlabels",
                        "from_name": "p",
                        "to_name": "image",
                        "original_width": 100,
                        "original_height": 100,
                        "value": {
                            "points": [[i / 7, i / 9] for i in range(200)],
                            "polygonlabels": ["RBC"],
                        },
                    }
                ],
            }
        ],
    }
    with path.open("w") as f:
        f.write("[")
        for i in range(1000):
            f.write(("," if i else "") + json.dumps({**task, "id": i}))
        f.write("]")
    assert path.stat().st_size > 7_000_000
    tracemalloc.start()
    n = sum(1 for _ in iter_export_tasks(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 1000
    assert peak < 2_000_000, f"peak {peak} bytes while streaming"


def test_truncated_export_names_file_and_task(tmp_path):
    path = tmp_path / "cut.json"
    tasks = [{"id": i, "data": {"image": f"{i}.png"}, "annotations": []} for i in range(5)]
    text = json.dumps(tasks)
    path.write_text(text[: text.index('"id": 3') + 4])
    seen = []
    with pytest.raises(InputError) as err:
        seen.extend(t["id"] for t in iter_export_tasks(path))
    assert seen == [0, 1, 2]
    assert err.value.file == str(path) and err.value.record == "task #3"
    broken = [("", "empty"), ("nope", "not a Label Studio"), ("[1, 2]", "not a JSON object")]
    for bad, why in broken:
        path.write_text(bad)
        with pytest.raises(InputError, match=why):
            list(iter_export_tasks(path))
    with pytest.raises(InputError, match="cannot open"):
        list(iter_export_tasks(tmp_path / "missing.json"))


def test_broken_results_raise_input_error_with_record():
    rle = encode_brush(_disc(20, 30, 10, 10, 4))
    base = {
        "id": "abc",
        "from_name": "b",
        "to_name": "image",
        "original_width": 30,
        "original_height": 20,
    }
    box = {"x": 1, "y": 1, "width": 2, "height": 2}
    cases = [
        (
            {
                **base,
                "type": "brushlabels",
                "original_width": 31,
                "value": {"format": "rle", "rle": rle, "brushlabels": ["WBC"]},
            },
            "needs 2480",
        ),
        (
            {
                **base,
                "type": "brushlabels",
                "value": {"format": "rle", "rle": rle[:-6], "brushlabels": ["WBC"]},
            },
            "corrupt brush",
        ),
        (
            {**base, "type": "brushlabels", "value": {"format": "png", "brushlabels": ["WBC"]}},
            "not supported",
        ),
        (
            {
                "id": "abc",
                "type": "rectanglelabels",
                "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": ["RBC"]},
            },
            "original_width",
        ),
        (
            {
                **base,
                "type": "rectanglelabels",
                "value": {"x": "12", "y": 1, "width": 2, "height": 2, "rectanglelabels": ["RBC"]},
            },
            "'x' is not a finite number",
        ),
        (
            {
                **base,
                "type": "polygonlabels",
                "value": {"points": [[1, 2], [3]], "polygonlabels": ["RBC"]},
            },
            "not an",
        ),
        (
            {
                **base,
                "type": "ellipselabels",
                "value": {
                    "x": 1,
                    "y": 2,
                    "radiusX": 3,
                    "radiusY": math.nan,
                    "ellipselabels": ["RBC"],
                },
            },
            "radiusY",
        ),
        (
            {**base, "type": "keypointlabels", "value": {"x": 1, "y": 2, "keypointlabels": "RBC"}},
            "list of non-empty strings",
        ),
        (
            {
                **base,
                "type": "polygonlabels",
                "value": {"points": [[1, 2], [3, 4]], "polygonlabels": ["RBC"]},
            },
            r"polygon has 2 points; a region needs 3 or more",
        ),
        # A drawn region without a class, with two, or of a tool not read: refused,
        # not skipped or counted once per class.
        (  # without a list to note it in, an unlabeled region is refused, not dropped
            {**base, "type": "rectanglelabels", "value": {**box, "rectanglelabels": []}},
            r"rectanglelabels region has no label; expected one",
        ),
        (
            {
                **base,
                "type": "rectanglelabels",
                "value": {**box, "rectanglelabels": ["RBC", "WBC"]},
            },
            r'has 2 labels \(RBC, WBC\); expected one \(a control with choice="multiple"',
        ),
        (
            {**base, "type": "cuboidlabels", "value": {**box, "cuboidlabels": ["RBC"]}},
            r"result type 'cuboidlabels' is not read \(labelloop reads brushlabels, ellipselabels",
        ),
        (
            {
                **base,
                "type": "rectanglelabels",
                "original_height": 0,
                "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": ["RBC"]},
            },
            "positive integer",
        ),
    ]
    for result, why in cases:
        with pytest.raises(InputError, match=why) as err:
            results_to_shapes([result], file="export.json", record="task 12 / annotation 3")
        assert err.value.file == "export.json"
        assert err.value.record == "task 12 / annotation 3 / result abc"


def test_a_region_whose_label_was_deselected_is_left_out_with_a_warning(ctx, tmp_path):
    """Label Studio lets an annotator deselect a region's label; the export then holds
    `rectanglelabels: []`. The region is left out and the ingest says so."""
    from labelloop.ingest import ingest_path
    from tests.factories import png, rect, task, write_export
    from tests.unit.ingest_fixtures import make_project

    unlabeled = rect("RBC", 9, 9, 5, 5, rid="r2")
    unlabeled["value"]["rectanglelabels"] = []
    tasks = [task(0, "images/0.png", [[rect("RBC", 1, 1, 5, 5), unlabeled]])]
    export = write_export(tmp_path, tasks, {"images/0.png": png(seed=0)})
    make_project(ctx, "cells", "detection", ["RBC"])
    report = ingest_path(ctx, "cells", export)
    assert report.shapes_per_class == {"RBC": 1} and report.skipped == []
    (said,) = [w for w in report.warnings if "no label" in w]
    assert said.endswith("result r2: rectanglelabels region has no label; left out")


def test_a_tool_region_without_its_labels_result_is_said_not_dropped():
    """<Rectangle> + <Labels> export each region twice, as a bare `rectangle` and as a
    `labels` result of the same id; a region drawn and never labelled has only the first.
    It was dropped without a word, so an image of drawn cells could read as empty."""
    import json

    root = require_shared_data(*LS, "frontend-examples")
    doc = json.loads((root / "image_tools" / "annotations" / "1.json").read_text())
    results = doc["annotations"][0]["result"]
    kept = [r for r in results if not (r.get("id") == "kuZf2E5DRQ" and r["type"] == "labels")]
    assert len(kept) == len(results) - 1
    unlabeled: list[str] = []
    shapes = results_to_shapes(kept, file="1.json", record="task 1", unlabeled=unlabeled)
    assert _counts(shapes)[("box", "Moonwalker")] + _counts(shapes)[("box", "Planet")] == 3
    assert unlabeled == [
        "task 1 / result kuZf2E5DRQ: rectangle region has no labels result of its id; left out"
    ]
    with pytest.raises(InputError, match="rectangle region has no labels result of its id; ex"):
        results_to_shapes(kept, file="1.json", record="task 1")
    with pytest.raises(InputError) as err:
        results_to_shapes(kept, file="1.json", record="task 1")
    assert err.value.record == "task 1 / result kuZf2E5DRQ"
    # Every paired region of the real export is read as before, with nothing said.
    unlabeled.clear()
    assert len(results_to_shapes(results, file="1.json", record="t", unlabeled=unlabeled)) == 10
    assert unlabeled == []


def test_per_region_choices_are_the_regions_attributes_never_tags_of_the_image():
    """`<Choices perRegion="true">` exports a `choices` result with a region's id and
    geometry. It was read as a tag of the whole image: a region's "ring stage" became
    the image's class, and a region classed by choices alone vanished unnamed."""
    import copy
    import json

    root = require_shared_data(*LS, "frontend-examples")
    doc = json.loads((root / "image_tools" / "annotations" / "1.json").read_text())
    results = doc["annotations"][0]["result"]

    def choice_of(rid: str, choice: str, control: str = "stage") -> dict:
        region = next(r for r in results if r.get("id") == rid)
        geometry = {k: v for k, v in region["value"].items() if not k.endswith("labels")}
        return {
            **{k: region[k] for k in ("original_width", "original_height", "to_name")},
            "id": rid,
            "from_name": control,
            "type": "choices",
            "value": {**copy.deepcopy(geometry), "choices": [choice]},
        }

    image_tag = {"id": "img1", "from_name": "q", "to_name": "image", "type": "choices",
                 "value": {"choices": ["Space"]}}  # fmt: skip
    extended = [
        *results,
        choice_of("dYjaasY56i", "ring"),
        choice_of("dYjaasY56i", "sharp", control="focus"),
        choice_of("kuZf2E5DRQ", "schizont"),
        image_tag,
    ]
    said: list[str] = []
    shapes = results_to_shapes(extended, file="1.json", record="task 1", unlabeled=said)
    assert said == []
    assert [s.label for s in shapes if isinstance(s, Tag)] == ["Space"]
    assert len(shapes) == 11  # the 10 regions as before, and the image's own tag
    by_id = {s.attributes.get("ls_id"): s for s in shapes}
    assert by_id["dYjaasY56i"].attributes["stage"] == "ring"
    assert by_id["dYjaasY56i"].attributes["focus"] == "sharp"
    assert by_id["kuZf2E5DRQ"].attributes["stage"] == "schizont"
    assert "stage" not in by_id["wkl8d6uPq5"].attributes

    # A tool region classed by choices alone is left out, and the warning names them.
    bare = [r for r in extended if not (r.get("id") == "kuZf2E5DRQ" and r["type"] == "labels")]
    said.clear()
    shapes = results_to_shapes(bare, file="1.json", record="task 1", unlabeled=said)
    assert len(shapes) == 10 and [s.label for s in shapes if isinstance(s, Tag)] == ["Space"]
    assert said == [
        "task 1 / result kuZf2E5DRQ: rectangle region has no labels result of its id (its "
        "per-region choices, stage: schizont, are not read as a class); left out"
    ]
    # A per-region result whose region is gone is said too, and refused without a list.
    orphan = {**choice_of("wkl8d6uPq5", "ring"), "id": "gone"}
    said.clear()
    shapes = results_to_shapes([*results, orphan], file="1.json", record="t", unlabeled=said)
    assert len(shapes) == 10 and not any(isinstance(s, Tag) for s in shapes)
    assert said == [
        "t / result gone: per-region choices (ring) have no region of their id; left out"
    ]
    with pytest.raises(InputError, match="no region of their id"):
        results_to_shapes([*results, orphan], file="1.json", record="t")


def test_the_latest_annotation_counts_whatever_zone_its_time_is_written_in(ctx, tmp_path):
    """Of one annotator's two annotations the later counts, chosen by comparing times as
    text: 10:00+05:00 (05:00 UTC) sorted after 06:00Z, so the older one counted."""
    from labelloop.datasets.freeze import current_annotations
    from labelloop.ingest import ingest_path
    from labelloop.projects import get_project
    from tests.factories import png, rect, task, write_export
    from tests.unit.ingest_fixtures import make_project

    older = [rect("RBC", 1, 1, 5, 5, rid="a")]
    newer = [rect("RBC", 1, 1, 5, 5, rid="a"), rect("RBC", 20, 20, 5, 5, rid="b")]
    t = task(0, "images/0.png", [older, newer])
    t["annotations"][0]["updated_at"] = "2026-01-02T10:00:00+05:00"
    t["annotations"][1]["updated_at"] = "2026-01-02T06:00:00Z"
    export = write_export(tmp_path, [t], {"images/0.png": png(seed=0)})
    make_project(ctx, "cells", "detection", ["RBC"])
    ingest_path(ctx, "cells", export)
    with ctx.db.session() as s:
        (labels,) = current_annotations(s, get_project(s, "cells").id).values()
    assert len(labels.shapes) == 2
    # Rows stored before times were written in one form keep theirs: compared as times.
    from sqlalchemy import select

    from labelloop.db.models import Annotation

    with ctx.db.session() as s:
        rows = s.scalars(select(Annotation).order_by(Annotation.id)).all()
        rows[0].source_updated_at = "2026-01-02T10:00:00+05:00"
        rows[1].source_updated_at = "2026-01-02T06:00:00Z"
    with ctx.db.session() as s:
        (labels,) = current_annotations(s, get_project(s, "cells").id).values()
    assert len(labels.shapes) == 2


def test_an_annotation_time_or_flag_not_understood_is_refused_naming_it():
    from labelloop.labelstudio.export import task_annotations

    def one(**fields) -> dict:
        ann = {"id": 9, "result": [], "updated_at": "2021-03-09T21:52:49.513742Z", **fields}
        return {"id": 5, "data": {"image": "a.png"}, "annotations": [ann]}

    (ann,) = task_annotations(one(updated_at="2021-03-09T23:52:49+02:00"))
    assert ann.updated_at == "2021-03-09T21:52:49.000000Z"
    (ann,) = task_annotations(one(updated_at=None, created_at="2021-03-09 21:52:49"))
    assert ann.updated_at == "2021-03-09T21:52:49.000000Z"  # no zone: taken as UTC
    (ann,) = task_annotations(one(updated_at=None))
    assert ann.updated_at is None and not ann.ground_truth
    cases = [
        ({"updated_at": "not a date"}, "updated_at 'not a date' is not an ISO 8601 date"),
        ({"updated_at": 1615326769}, "updated_at 1615326769 is not an ISO 8601 date"),
        ({"updated_at": "", "created_at": "yesterday"}, "created_at 'yesterday' is not"),
        ({"ground_truth": "false"}, "ground_truth is 'false', not true or false"),
        ({"ground_truth": 1}, "ground_truth is 1, not true or false"),
    ]
    for fields, why in cases:
        with pytest.raises(InputError, match=why) as err:
            task_annotations(one(**fields))
        assert err.value.record == "task 5 / annotation 9"


def test_an_annotation_whose_result_is_null_is_refused_not_read_as_empty():
    from labelloop.labelstudio.export import task_annotations

    task = {"id": 5, "data": {"image": "a.png"}, "annotations": [{"id": 9, "result": None}]}
    (ann,) = task_annotations(task, None)
    with pytest.raises(InputError, match="annotation result is not a list") as err:
        results_to_shapes(ann.results, file="export.json", record=ann.record)
    assert err.value.record == "task 5 / annotation 9"


def test_ignored_result_types_are_silent():
    results = [
        {"type": "relation", "from_id": "a", "to_id": "b", "direction": "right"},
        {
            "id": "t",
            "type": "textarea",
            "from_name": "x",
            "to_name": "image",
            "value": {"text": ["hello"]},
        },
        {
            "id": "n",
            "type": "labels",
            "from_name": "ner",
            "to_name": "text",
            "value": {"start": 0, "end": 4, "labels": ["PER"]},
        },
        # Spans of other objects in a mixed project: no image region, nothing to read.
        {
            "id": "p",
            "type": "paragraphlabels",
            "from_name": "para",
            "to_name": "dialogue",
            "value": {"start": "0", "end": "1", "paragraphlabels": ["question"]},
        },
        {
            "id": "t",
            "type": "timeserieslabels",
            "from_name": "ts",
            "to_name": "signal",
            "value": {"start": 3, "end": 9, "instant": False, "timeserieslabels": ["Run"]},
        },
    ]
    assert results_to_shapes(results, file="f", record="r") == []


# --- image references ---------------------------------------------------------------------


def test_resolve_local_image(tmp_path):
    root = tmp_path / "storage"
    (root / "images").mkdir(parents=True)
    (root / "upload" / "29").mkdir(parents=True)
    (root / "images" / "smear 1.png").write_bytes(b"x")
    (root / "upload" / "29" / "ab12-example.png").write_bytes(b"x")
    (root / "flat.png").write_bytes(b"x")
    real = root.resolve()
    smear = real / "images" / "smear 1.png"
    assert resolve_local_image("/data/local-files/?d=images/smear%201.png", root) == smear
    upload = real / "upload" / "29" / "ab12-example.png"
    assert resolve_local_image("/data/upload/29/ab12-example.png", root) == upload
    assert resolve_local_image("/data/upload/7/flat.png", root) == real / "flat.png"  # by basename
    assert resolve_local_image("images/smear 1.png", root) == smear
    assert resolve_local_image(str(real / "flat.png"), root) == real / "flat.png"

    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (root / "link.png").symlink_to(outside)
    for ref in [
        "../secret.png",
        "/data/local-files/?d=../secret.png",
        str(outside),
        "link.png",
        "/data/local-files/?d=%2E%2E/secret.png",
        "/data/upload/1/../../../secret.png",
    ]:
        with pytest.raises(InputError, match="escapes"):
            resolve_local_image(ref, root)
    refused = [
        ("https://example.com/a.png", "not a local file"),
        ("missing.png", "not found"),
        ("/data/local-files/?x=1", "without"),
        ("a\x00b.png", "NUL"),
    ]
    for ref, why in refused:
        with pytest.raises(InputError, match=why):
            resolve_local_image(ref, root)


# --- fuzz ----------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 10**6) | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
_value_keys = [
    "x",
    "y",
    "width",
    "height",
    "rotation",
    "radiusX",
    "radiusY",
    "points",
    "rle",
    "format",
    "rectanglelabels",
    "polygonlabels",
    "brushlabels",
    "keypointlabels",
    "ellipselabels",
    "labels",
    "choices",
]
_types = st.sampled_from(
    [
        "rectanglelabels",
        "polygonlabels",
        "brushlabels",
        "keypointlabels",
        "ellipselabels",
        "choices",
        "labels",
        "relation",
        "textarea",
        "brush",
    ]
)


@st.composite
def _result(draw):
    value = {}
    for key in draw(st.lists(st.sampled_from(_value_keys), max_size=8, unique=True)):
        if key.endswith("labels") or key == "choices":
            value[key] = draw(st.lists(st.text(max_size=4), max_size=2) | _json)
        elif key == "points":
            pair = st.lists(st.floats(-1e3, 1e3) | _json, max_size=3)
            value[key] = draw(st.lists(pair, max_size=4))
        elif key == "rle":
            head = list(draw(st.integers(0, 64)).to_bytes(4, "big"))
            body = draw(st.lists(st.integers(-2, 300), max_size=40))
            value[key] = draw(st.just(head) | st.just([])) + body
        else:
            value[key] = draw(st.floats(-1e6, 1e6) | _json)
    result = {"id": draw(st.text(max_size=4) | _json), "type": draw(_types | _json), "value": value}
    for key in ("original_width", "original_height"):
        if draw(st.booleans()):
            result[key] = draw(st.integers(-2, 8) | _json)
    return result


@settings(max_examples=300, deadline=None)
@given(st.lists(_result(), max_size=4) | _json)
def test_fuzz_results_only_raise_input_error(results):
    try:
        shapes = results_to_shapes(results, file="fuzz.json", record="task 1 / annotation 1")
    except InputError as exc:
        assert exc.file == "fuzz.json"
        return
    assert all(s.label for s in shapes)


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (Box, {"x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0}),
        (Box, {"x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0, "rotation": 30.0}),
        (Polygon, {"points": [(0.0, 0.0), (4.0, 0.0), (0.0, 4.0)]}),
        (Keypoint, {"x": 1.0, "y": 2.0}),
        (Ellipse, {"x": 1.0, "y": 2.0, "rx": 3.0, "ry": 4.0}),
        (Mask, {"size": (4, 5), "counts": "abc"}),
        (Tag, {}),
    ],
)
def test_a_trusted_shape_is_the_validated_shape(cls, values):
    """The converter's shapes skip validation: each must be the shape pydantic builds."""
    values = {"label": "RBC", "attributes": {"a": 1}, **values}
    trusted, checked = trusted_shape(cls, **values), cls.model_validate(values)
    assert trusted == checked
    assert list(vars(trusted)) == list(vars(checked))
    assert shapes_to_json([trusted]) == shapes_to_json([checked])
    assert trusted.model_fields_set == checked.model_fields_set


def _outcome(results):
    try:
        return results_to_shapes(results, file="f.json", record="task 1 / annotation 1")
    except InputError as exc:
        return (exc.record, exc.reason)


@settings(max_examples=300, deadline=None)
@given(st.lists(_result(), max_size=4), st.integers(1, 4000), st.integers(1, 4000))
def test_the_fast_paths_read_what_the_checked_paths_read(results, width, height):
    """Plain boxes, single labels and integer sizes skip the per-number checks: the shapes,
    or the error with its record, must be what the checked path gives, and the revision
    text must be the bytes pydantic's dump gives."""
    for r in results:
        if isinstance(r.get("type"), str) and r["type"].lower() == "rectanglelabels":
            r.setdefault("original_width", width)
            r.setdefault("original_height", height)
    fast = _outcome(results)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convert, "_plain_box", lambda value, width, height: None)
        mp.setattr(convert, "_LARGE", 0)  # every size through the float checks
        checked = _outcome(results)
    assert fast == checked
    if isinstance(fast, list):
        assert [vars(s) for s in fast] == [vars(s) for s in checked]
        dumped = json.dumps(shapes_to_json(fast), sort_keys=True, separators=(",", ":"))
        assert shapes_json_text(fast) == dumped


def test_plain_boxes_take_ints_and_refuse_what_the_checks_refuse():
    def box(**value):
        r = {"id": "b", "type": "rectanglelabels", "original_width": 200, "original_height": 100}
        return [{**r, "value": {"rectanglelabels": ["RBC"], **value}}]

    (shape,) = results_to_shapes(box(x=10, y=20, width=5, height=50), file="f", record="t")
    assert (shape.x, shape.y, shape.w, shape.h, shape.rotation) == (20.0, 20.0, 10.0, 50.0, 0.0)
    assert all(type(v) is float for v in (shape.x, shape.y, shape.w, shape.h, shape.rotation))
    for value, why in [
        ({"x": 1, "y": 2, "width": -1, "height": 3}, "negative"),
        ({"x": 10**400, "y": 2, "width": 1, "height": 3}, "not a finite number"),
        ({"x": 1e308, "y": 1e308, "width": 1, "height": 3}, None),  # a sum overflows: checked
        ({"x": True, "y": 2, "width": 1, "height": 3}, "not a finite number"),
        ({"x": 1, "y": 2, "width": 1, "height": 3, "rotation": None}, None),
    ]:
        if why is None:
            assert results_to_shapes(box(**value), file="f", record="t")
        else:
            with pytest.raises(InputError, match=why) as err:
                results_to_shapes(box(**value), file="f", record="t")
            assert err.value.record == "t / result b"


def test_shapes_json_text_is_the_pydantic_dump_and_takes_what_json_cannot():
    shapes = [
        Box(label="Plättchen", x=1, y=2.5, w=3, h=4, attributes={"z": 1, "a": True}),
        Polygon(label="p", points=[(0, 0), (4.25, 0), (0, 4)]),
        Mask(label="m", size=(2, 3), counts="abc"),
        Keypoint(label="k", x=1e16, y=-0.0),
        Ellipse(label="e", x=1, y=2, rx=3, ry=4, rotation=5),
        Tag(label="t"),
    ]
    dumped = json.dumps(shapes_to_json(shapes), sort_keys=True, separators=(",", ":"))
    assert shapes_json_text(shapes) == dumped
    odd = [Keypoint(label="k", x=float("inf"), y=0.0)]  # pydantic writes null, json cannot
    assert shapes_json_text(odd) == json.dumps(
        shapes_to_json(odd), sort_keys=True, separators=(",", ":")
    )


_PLAIN_FLOAT = st.one_of(st.floats(0, 5000), st.integers(-(10**6), 10**6).map(lambda i: i / 64))
_EDGE_FLOAT = st.one_of(
    st.floats(),  # nan, inf, subnormals, 1e308
    st.floats(-1e-3, 1e-3),  # where json switches to an exponent (below 1e-4)
    st.floats(1e15, 1e17),  # and above 1e16
    st.sampled_from([0.0, -0.0, 1e-4, 1e-5, -2.5e-7, 1e16, 9999999999999998.0, 100.00001]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
# Mostly plain coordinates, so that most examples hold at most one edge value.
_ANY_FLOAT = st.one_of(_PLAIN_FLOAT, _PLAIN_FLOAT, _PLAIN_FLOAT, _EDGE_FLOAT)
_ATTRIBUTE = st.one_of(st.text(max_size=8), st.integers(-(2**70), 2**70), _ANY_FLOAT, st.booleans())


@st.composite
def _any_shapes(draw) -> list:
    label = draw(
        st.one_of(
            st.sampled_from(["RBC", "Plättchen", 'a"b', "null", "1e-5", "del\x7f", "tab\t"]),
            st.text(max_size=12),
        )
    )
    attributes = draw(st.dictionaries(st.text("abc", max_size=3), _ATTRIBUTE, max_size=2))
    f = _ANY_FLOAT
    built = [
        trusted_shape(
            Box, label=label, x=draw(f), y=draw(f), w=draw(f), h=draw(f), attributes=attributes
        ),
        trusted_shape(
            Polygon, label=label, points=draw(st.lists(st.tuples(f, f), max_size=3)), attributes={}
        ),
        trusted_shape(Keypoint, label=label, x=draw(f), y=draw(f), attributes={}),
        trusted_shape(Tag, label=label, attributes=attributes),
    ]
    return draw(st.lists(st.sampled_from(built), min_size=1, max_size=3))


@settings(max_examples=1500, deadline=None)
@given(_any_shapes())
def test_shapes_json_text_never_changes_the_revision_bytes(shapes):
    """The revision text is hashed and compared with revisions stored by earlier versions:
    whichever encoder writes it, it is json's compact sorted dump of pydantic's values,
    byte for byte, for any float (nan, inf, tiny, huge), label or attribute."""
    try:
        want = json.dumps(
            [s.__dict__ for s in shapes], sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError):
        want = json.dumps(shapes_to_json(shapes), sort_keys=True, separators=(",", ":"))
    assert shapes_json_text(shapes) == want


def test_local_images_resolve_as_the_full_walk_does(tmp_path):
    """One lstat per reference where nothing is a link; links, '..' and hidden folders
    give what resolving every component gives."""
    root = tmp_path / "storage"
    (root / ".cache" / "images").mkdir(parents=True)
    (root / "real").mkdir()
    (root / ".cache" / "images" / "a.png").write_bytes(b"x")
    (root / "real" / "b.png").write_bytes(b"x")
    (root / "alias").symlink_to(root / "real")  # a linked folder inside the root
    (root / "real" / "c.png").symlink_to(root / "real" / "b.png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "d.png").write_bytes(b"x")
    (root / "out").symlink_to(outside)
    images = LocalImages(root)
    refs = [
        ".cache/images/a.png",
        "alias/b.png",
        "real/c.png",
        "real/../real/b.png",
        "real/b.png",
        "alias/b.png",
        "./real/b.png",
        "real//b.png",
    ]
    for ref in refs * 2:  # the second round meets folders already known
        assert images.resolve(ref) == (root / ref).resolve()
    for ref in ["out/d.png", "alias/../out/d.png"]:
        with pytest.raises(InputError, match="escapes"):
            images.resolve(ref)
    with pytest.raises(InputError, match="not found"):
        images.resolve("real")  # a folder is not an image
