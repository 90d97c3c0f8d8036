"""'CVAT for images 1.1' XML ingest, end to end through the format registry."""

from __future__ import annotations

import io
import math
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from labelloop.domain import Box, shapes_from_json
from labelloop.errors import InputError
from labelloop.geometry import box_corners, decode_mask, shape_bbox
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

DOCS_LABELS = ["car", "traffic_line", "wheel", "plate", "good_frame", "1", "2", "3"]
# The docs example's mask, decoded by hand: 13x15 box at (707, 888), 149 foreground pixels.
DOCS_MASK_PIXELS = 149


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 120, 140)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def _docs_export(tmp_path: Path) -> Path:
    src = require_shared_data("exports", "cvat", "docs-example-cvat-images-1.1", "annotations.xml")
    export = tmp_path / "cvat-task"
    (export / "images").mkdir(parents=True)
    shutil.copy(src, export / "annotations.xml")
    (export / "images" / "filename000.jpg").write_bytes(_jpeg(1600, 1200))
    return export


def test_docs_example_shapes_per_kind_and_label(ctx, tmp_path):
    export = _docs_export(tmp_path)
    assert detect_format(export) == "cvat"
    project = make_project(ctx, "cvat-docs", "segmentation", DOCS_LABELS)
    report = ingest_path(ctx, project, export)
    assert (report.format, report.records, report.images_new, report.annotations_new) == (
        "cvat",
        1,
        1,
        1,
    )
    # polylines have no canonical shape: the two traffic lines are counted, not stored
    assert report.shapes_per_kind == {"box": 1, "polygon": 1, "keypoint": 7, "tag": 1, "mask": 1}
    assert report.shapes_per_class == {
        "wheel": 4,
        "car": 2,
        "plate": 1,
        "good_frame": 1,
        "1": 1,
        "2": 1,
        "3": 1,
    }
    meta = item_meta(ctx)["4/0"]
    assert meta["ignored_shapes"] == {"polyline": 2}
    # Said in the report, which the CLI prints and --json carries, not only logged.
    (said,) = [w for w in report.warnings if "left out" in w]
    assert said.endswith(
        "(image 0 'filename000.jpg'): 2 polyline shape(s) left out (no canonical shape for them)"
    )
    assert meta["cvat_task_id"] == "4" and meta["cvat_image_id"] == "0"
    shapes = shapes_from_json(active_shapes(ctx))
    mask = next(s for s in shapes if s.kind == "mask")
    assert tuple(mask.size) == (1200, 1600)
    pixels = decode_mask(mask.size, mask.counts)
    assert int(pixels.sum()) == DOCS_MASK_PIXELS
    assert shape_bbox(mask) == (707.0, 888.0, 720.0, 903.0)
    assert pixels[888, 710] and not pixels[888, 707]  # row 0 starts with 3 background pixels
    box = next(s for s in shapes if s.kind == "box")
    assert (box.x, box.y) == (797.33, 870.92)
    assert math.isclose(box.w, 965.52 - 797.33) and math.isclose(box.h, 928.94 - 870.92)
    assert box.attributes == {"occluded": False, "z_order": 4}
    skeleton = sorted((s for s in shapes if s.attributes.get("skeleton")), key=lambda s: s.label)
    assert [(s.label, s.x, s.y) for s in skeleton] == [
        ("1", 54.47, 94.81),
        ("2", 68.02, 162.34),
        ("3", 125.87, 62.85),
    ]
    assert {s.attributes["instance"] for s in skeleton} == {1}


def test_skeleton_points_outside_are_left_out_and_a_bad_flag_is_refused(ctx, tmp_path):
    export = _docs_export(tmp_path)
    xml = export / "annotations.xml"
    point = 'points label="2" occluded="0" source="manual" outside="0"'
    assert point in xml.read_text()
    project = make_project(ctx, "cvat-docs", "segmentation", DOCS_LABELS)
    xml.write_text(xml.read_text().replace(point, point.replace('outside="0"', 'outside="maybe"')))
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, export)
    assert err.value.record.endswith("/ point 2") and "outside 'maybe' is not" in err.value.reason
    assert row_counts(ctx) == NOTHING
    xml.write_text(xml.read_text().replace('outside="maybe"', 'outside="true"'))
    report = ingest_path(ctx, project, export)
    parts = {k: v for k, v in report.shapes_per_class.items() if k in ("1", "2", "3")}
    assert parts == {"1": 1, "3": 1}  # point 2 is outside the picture


def test_reingest_is_idempotent(ctx, tmp_path):
    export = _docs_export(tmp_path)
    project = make_project(ctx, "cvat-docs", "segmentation", DOCS_LABELS)
    ingest_path(ctx, project, export / "annotations.xml")
    before = row_counts(ctx)
    again = ingest_path(ctx, project, export)
    assert (again.images_new, again.annotations_new, again.annotations_unchanged) == (0, 0, 1)
    assert row_counts(ctx) == before


PROJECT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <project>
      <id>3</id>
      <name>smears</name>
      <labels>
        <label><name>RBC</name><attributes>
          <attribute><name>lysed</name><input_type>checkbox</input_type></attribute>
          <attribute><name>lobes</name><input_type>number</input_type></attribute>
        </attributes></label>
        <label><name>WBC</name><attributes></attributes></label>
      </labels>
      <tasks>
        <task><id>10</id><name>a</name><subset>Train</subset></task>
        <task><id>11</id><name>b</name><subset>Validation</subset></task>
      </tasks>
    </project>
  </meta>
  <image id="0" name="a.png" subset="Train" task_id="10" width="64" height="48">
    <box label="RBC" source="manual" occluded="1" xtl="10" ytl="8" xbr="30" ybr="18"
         rotation="30.00" z_order="0" group_id="2">
      <attribute name="lysed">true</attribute>
      <attribute name="lobes">3</attribute>
    </box>
    <ellipse label="WBC" source="manual" occluded="0" cx="40" cy="30" rx="6" ry="4" z_order="1">
    </ellipse>
    <mask label="WBC" source="manual" occluded="0" rle="1, 2, 3, 2" left="5" top="6"
          width="4" height="2" z_order="0"></mask>
  </image>
  <image id="0" name="b.png" subset="Validation" task_id="11" width="64" height="48">
    <polygon label="RBC" source="manual" occluded="0" points="1,1;20,1;20,20" z_order="0">
    </polygon>
    <cuboid label="RBC" occluded="0" xtl1="1" ytl1="1" xbl1="1" ybl1="2" xtr1="2" ytr1="1"
            xbr1="2" ybr1="2" xtl2="3" ytl2="3" xbl2="3" ybl2="4" xtr2="4" ytr2="3" xbr2="4"
            ybr2="4" z_order="0"></cuboid>
  </image>
  <image id="1" name="c.png" subset="Validation" task_id="11" width="64" height="48">
    <points label="WBC" source="manual" occluded="0" points="5,5;6,7" z_order="0"></points>
  </image>
</annotations>
"""


def _project_export(tmp_path: Path, xml: str = PROJECT_XML) -> Path:
    export = tmp_path / "cvat-project"
    for i, (subset, name) in enumerate(
        [("Train", "a.png"), ("Validation", "b.png"), ("Validation", "c.png")]
    ):
        (export / "images" / subset).mkdir(parents=True, exist_ok=True)
        (export / "images" / subset / name).write_bytes(png(seed=i))
    (export / "annotations.xml").write_text(xml)
    return export


def test_project_export_keeps_tasks_subsets_attributes(ctx, tmp_path):
    export = _project_export(tmp_path)
    project = make_project(ctx, "smears", "segmentation", ["RBC", "WBC"])
    report = ingest_path(ctx, project, export)
    assert report.records == 3 and report.annotations_new == 3
    assert report.shapes_per_kind == {
        "box": 1,
        "ellipse": 1,
        "mask": 1,
        "polygon": 1,
        "keypoint": 2,
    }
    meta = item_meta(ctx)
    assert set(meta) == {"10/0", "11/0", "11/1"}  # the same frame id in two tasks stays apart
    assert meta["10/0"]["subset"] == "Train" and meta["11/1"]["subset"] == "Validation"
    assert meta["11/0"]["ignored_shapes"] == {"cuboid": 1}
    assert [w.split(": ", 1)[1] for w in report.warnings if "left out" in w] == [
        "1 cuboid shape(s) left out (no canonical shape for them)"
    ]
    shapes = {s.kind: s for s in shapes_from_json(active_shapes(ctx))}
    box = shapes["box"]
    assert isinstance(box, Box)
    assert box.attributes == {
        "lysed": True,
        "lobes": 3,
        "occluded": True,
        "z_order": 0,
        "group_id": 2,
        "source": "manual",
    }
    # CVAT rotates around the centre (20, 13); the canonical corners must land on that
    t = math.radians(30)
    expected = [
        (20 + dx * math.cos(t) - dy * math.sin(t), 13 + dx * math.sin(t) + dy * math.cos(t))
        for dx, dy in [(-10, -5), (10, -5), (10, 5), (-10, 5)]
    ]
    assert np.allclose(box_corners(box), expected)
    mask = decode_mask(shapes["mask"].size, shapes["mask"].counts)
    want = np.zeros((48, 64), dtype=bool)
    want[6, 6:8] = True  # runs 1 bg, 2 fg, 3 bg, 2 fg over a 4x2 box at (5, 6), row-major
    want[7, 7:9] = True
    assert np.array_equal(mask, want)
    assert (shapes["ellipse"].rx, shapes["ellipse"].ry) == (6.0, 4.0)


def _bad_box_export(tmp_path: Path) -> Path:
    return _project_export(
        tmp_path, PROJECT_XML.replace('points="1,1;20,1;20,20"', 'points="1,1;20"')
    )


def test_bad_shape_fails_the_ingest_names_it_and_writes_nothing(ctx, tmp_path):
    export = _bad_box_export(tmp_path)
    project = make_project(ctx, "smears", "segmentation", ["RBC", "WBC"])
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, export)
    msg = str(err.value)
    assert "annotations.xml" in msg and "image 0 'b.png' / polygon 1" in msg
    assert "bad points" in msg
    assert row_counts(ctx) == NOTHING
    report = ingest_path(ctx, project, export, skip_invalid=True)
    assert report.annotations_new == 2
    assert [(s.record, s.reason) for s in report.skipped] == [
        ("image 0 'b.png' / polygon 1", "bad points '1,1;20'")
    ]


@pytest.mark.parametrize(
    ("old", "new", "record", "reason"),
    [
        ('xtl="10"', 'xtl="abc"', "image 0 'a.png' / box 1", "xtl 'abc' is not a finite number"),
        ('xbr="30"', 'xbr="3"', "image 0 'a.png' / box 1", "box corners are reversed"),
        ('rle="1, 2, 3, 2"', 'rle="1, 2, 3"', "image 0 'a.png' / mask 1", "covers 6 pixels"),
        ('left="5"', 'left="62"', "image 0 'a.png' / mask 1", "does not fit the 64x48 image"),
        ('name="c.png"', 'name="gone.png"', "image 1 'gone.png'", "'gone.png' not found"),
        (
            'width="64" height="48">\n    <points',
            'width="0" height="48">\n    <points',
            "image 1 'c.png'",
            "image width 0",
        ),
        # CVAT's typed values: one its type cannot hold is refused, not read as false
        # or kept as text.
        ('occluded="1"', 'occluded="yes"', "image 0 'a.png' / box 1", "occluded 'yes' is not"),
        (">true</attribute>", ">maybe</attribute>", "image 0 'a.png' / box 1", "'lysed' 'maybe'"),
        (">3</attribute>", ">three</attribute>", "image 0 'a.png' / box 1", "'lobes' is 'three'"),
        ('name="lobes">', ">", "image 0 'a.png' / box 1", "an <attribute> has no name"),
        (
            'width="64" height="48">\n    <points',
            'width="128" height="96">\n    <points',
            "image 1 'c.png'",
            "gives its image as 128x96 but the image is 64x48",
        ),
    ],
)
def test_broken_records_name_file_record_and_reason(ctx, tmp_path, old, new, record, reason):
    assert old in PROJECT_XML
    export = _project_export(tmp_path, PROJECT_XML.replace(old, new, 1))
    project = make_project(ctx, "smears", "segmentation", ["RBC", "WBC"])
    with pytest.raises(InputError) as err:
        ingest_path(ctx, project, export)
    assert err.value.file == str(export / "annotations.xml")
    assert err.value.record == record and reason in err.value.reason
    assert row_counts(ctx) == NOTHING


def test_image_outside_the_export_is_never_read(ctx, tmp_path):
    (tmp_path / "secret.png").write_bytes(png(seed=9))
    export = _project_export(
        tmp_path, PROJECT_XML.replace('name="c.png"', 'name="../../secret.png"')
    )
    project = make_project(ctx, "smears", "segmentation", ["RBC", "WBC"])
    with pytest.raises(InputError, match=r"'\.\./\.\./secret\.png' not found") as err:
        ingest_path(ctx, project, export)
    assert err.value.record == "image 1 '../../secret.png'"
    assert row_counts(ctx) == NOTHING


def test_label_outside_project_and_corrupt_image_are_refused(ctx, tmp_path):
    export = _project_export(tmp_path)
    project = make_project(ctx, "smears", "segmentation", ["RBC"])
    with pytest.raises(InputError, match=r"label 'WBC' is not in project") as err:
        ingest_path(ctx, project, export)
    assert err.value.record.startswith("image 0 'a.png'")
    (export / "images" / "Validation" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    project = make_project(ctx, "smears2", "segmentation", ["RBC", "WBC"])
    with pytest.raises(InputError, match="cannot decode image") as err:
        ingest_path(ctx, project, export)
    assert "c.png" in str(err.value)
    assert row_counts(ctx) == NOTHING


def test_truncated_video_and_hostile_xml_are_stream_errors(ctx, tmp_path):
    project = make_project(ctx, "smears", "segmentation", ["RBC", "WBC"])
    export = _project_export(tmp_path, PROJECT_XML[: PROJECT_XML.index("<points")])
    with pytest.raises(InputError, match="invalid or truncated XML") as err:
        ingest_path(ctx, project, export)
    assert err.value.file == str(export / "annotations.xml")
    assert row_counts(ctx) == NOTHING
    video = PROJECT_XML.replace(
        "</annotations>", '<track id="0" label="RBC"></track>\n</annotations>'
    )
    (export / "annotations.xml").write_text(video)
    with pytest.raises(InputError, match="CVAT for video"):
        ingest_path(ctx, project, export)
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
        "<annotations><version>1.1</version><meta></meta>&b;</annotations>"
    )
    (export / "annotations.xml").write_text(bomb)
    with pytest.raises(InputError, match="forbidden construct"):
        ingest_path(ctx, project, export, fmt="cvat")
    assert row_counts(ctx) == NOTHING


def test_detect_is_strict(tmp_path):
    voc = tmp_path / "voc.xml"
    voc.write_text("<annotation><filename>a.jpg</filename></annotation>")
    cvat = formats()["cvat"]
    assert not cvat.detect(voc) and not cvat.detect(tmp_path)
    (tmp_path / "annotations.xml").write_text(PROJECT_XML)
    assert cvat.detect(tmp_path) and cvat.detect(tmp_path / "annotations.xml")


def test_memory_stays_flat_on_a_large_file(tmp_path):
    """8k images, one shared image file: the reader's peak must not grow with the file
    (measured: ~0.2 MB peak for a 1.8 MB file, the same at 2k images)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png())
    image = (
        '<image id="{i}" name="a.png" width="64" height="48">'
        '<box label="RBC" occluded="0" xtl="1" ytl="1" xbr="9" ybr="9" z_order="0"></box>'
        '<polygon label="WBC" occluded="0" points="1,1;20,1;20,20;1,20" z_order="0"></polygon>'
        "</image>\n"
    )
    with open(tmp_path / "annotations.xml", "w") as f:
        f.write("<annotations><version>1.1</version><meta><task><id>1</id></task></meta>\n")
        for i in range(8_000):
            f.write(image.format(i=i))
        f.write("</annotations>\n")
    size = (tmp_path / "annotations.xml").stat().st_size
    tracemalloc.start()
    shapes = 0
    for rec in formats()["cvat"].read(tmp_path, ReadOptions()):
        assert rec.error is None
        shapes += len(rec.annotations[0].shapes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert shapes == 16_000
    assert size > 1_500_000 and peak < 500_000


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=mutated(PROJECT_XML.encode()))
def test_fuzz_mutated_xml_only_raises_input_error(tmp_path, data):
    export = _project_export(tmp_path)
    (export / "annotations.xml").write_bytes(data)
    read_all("cvat", export)  # asserts every error is an InputError


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_only_raise_input_error(tmp_path, data):
    (tmp_path / "annotations.xml").write_bytes(b"<annotations>" + data)
    read_all("cvat", tmp_path)
