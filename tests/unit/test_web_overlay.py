"""The dashboard's overlays: what they draw, and that nothing of the image is hidden."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from labelloop.domain import Box, Tag
from labelloop.imaging import encode_png
from labelloop.web.overlay import CAPTION, overlay_png


def _overlay(image: np.ndarray, shapes: list) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(overlay_png(encode_png(image), shapes, ["a", "b"]))))


def test_a_class_caption_sits_above_the_image_not_over_its_top_rows():
    image = np.full((40, 60, 3), 200, np.uint8)
    image[0:5, 0:5] = (255, 0, 0)  # a cell in the top-left corner
    tagged = _overlay(image, [Tag(label="b")])
    assert tagged.shape == (40 + CAPTION, 60, 3)
    assert (tagged[CAPTION:] == image).all()  # the whole image, under the caption
    assert (tagged[:CAPTION] != 0).any()  # the caption's text
    boxed = _overlay(image, [Box(label="a", x=10, y=10, w=10, h=10)])
    assert boxed.shape == image.shape and (boxed != image).any()
