"""'CVAT for images 1.1' out, read back by labelloop's own CVAT reader: the same shapes."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.cvat.reader import read_cvat_xml
from labelloop.cvat.writer import CvatImage, cvat_xml
from labelloop.domain import Box, Ellipse, Keypoint, Polygon, Tag
from labelloop.geometry import decode_mask, mask_shape
from labelloop.ingest.records import ReadOptions
from tests.factories import png


def _mask(height: int, width: int, rows: slice, cols: slice, label: str):
    m = np.zeros((height, width), np.uint8)
    m[rows, cols] = 1
    m[rows.start, cols.start] = 0  # a hole at the corner: runs must not start with it
    return mask_shape(m, label)


def test_every_shape_survives_the_round_trip(tmp_path):
    shapes = [
        Box(label="RBC", x=5, y=6, w=10, h=8),
        Box(label="WBC", x=20, y=10, w=12, h=6, rotation=30),
        Polygon(label="Platelets", points=[(1, 1), (9, 1), (9, 7)]),
        Keypoint(label="RBC", x=33.5, y=20.25),
        Ellipse(label="WBC", x=40, y=30, rx=5, ry=3, rotation=15),
        Tag(label="RBC"),
        _mask(48, 64, slice(30, 40), slice(2, 12), "RBC"),
        _mask(48, 64, slice(0, 48), slice(60, 64), "Platelets"),  # touches the image edge
    ]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(64, 48))
    xml = cvat_xml([CvatImage("a.png", 64, 48, shapes)], ["RBC", "WBC", "Platelets"], "round 1")
    (tmp_path / "annotations.xml").write_text(xml)
    (rec,) = list(read_cvat_xml(tmp_path, ReadOptions()))
    assert rec.error is None
    back = rec.annotations[0].shapes
    assert [s.kind for s in back] == [s.kind for s in shapes]
    for a, b in zip(shapes, back, strict=True):
        assert a.label == b.label
        if a.kind == "mask":
            assert (decode_mask(a.size, a.counts) == decode_mask(b.size, b.counts)).all()
        elif a.kind == "box":
            for f in ("x", "y", "w", "h", "rotation"):
                assert getattr(b, f) == pytest.approx(getattr(a, f), abs=0.01)
        elif a.kind == "polygon":
            assert np.allclose(a.points, b.points)
        elif a.kind in ("keypoint", "ellipse"):
            assert (b.x, b.y) == pytest.approx((a.x, a.y), abs=0.01)
    assert b"source" in xml.encode() and "<version>1.1</version>" in xml


def test_names_are_escaped():
    from defusedxml.ElementTree import fromstring

    name = "we\"ird & <name>'s.png"
    root = fromstring(cvat_xml([CvatImage(name, 4, 4, [])], ["a&b"], "t<1>").encode())
    assert root.find("image").get("name") == name
    assert root.find("meta/task/name").text == "t<1>"
    assert root.find("meta/task/labels/label/name").text == "a&b"
