"""Shapes drawn over their image as a PNG: class-coloured fill and outline for regions,
boxes as rectangles, tags as a caption. Pages and reports show predictions and truth the
same way."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from labelloop.domain import Box, Keypoint, Shape, Tag
from labelloop.geometry import box_corners, shape_mask
from labelloop.imaging import decode_image

COLORS = [(37, 99, 235), (220, 38, 38), (22, 163, 74), (147, 51, 234), (234, 88, 12)]
MAX_SIDE = 512
CAPTION = 14  # rows of the strip that names an image's class tags


def class_color(labels: list[str], label: str) -> tuple[int, int, int]:
    i = labels.index(label) if label in labels else len(labels)
    return COLORS[i % len(COLORS)]


def overlay_png(image_bytes: bytes, shapes: list[Shape], labels: list[str]) -> bytes:
    """The image with `shapes` drawn over it, scaled down to at most MAX_SIDE pixels."""
    rgb = decode_image(image_bytes).astype(np.float32)
    h, w = rgb.shape[:2]
    edges = np.zeros((h, w), bool)
    for shape in shapes:
        if isinstance(shape, Box | Keypoint | Tag):
            continue
        try:
            m = shape_mask(shape, h, w)
        except ValueError:
            continue  # a mask of another size: nothing sensible to draw
        if m is None or not m.any():
            continue
        color = np.array(class_color(labels, shape.label), np.float32)
        rgb[m] = rgb[m] * 0.55 + color * 0.45
        inner = m.copy()
        inner[1:, :] &= m[:-1, :]
        inner[:-1, :] &= m[1:, :]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        edge = m & ~inner
        rgb[edge] = color
        edges |= edge
    im = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    tags = []
    for shape in shapes:
        color = class_color(labels, shape.label)
        if isinstance(shape, Box):
            draw.polygon(box_corners(shape), outline=color, width=max(1, w // 256))
        elif isinstance(shape, Keypoint):
            r = max(2, w // 128)
            draw.ellipse((shape.x - r, shape.y - r, shape.x + r, shape.y + r), fill=color)
        elif isinstance(shape, Tag):
            tags.append(shape.label)
    if tags:  # a caption strip above the image, not over its top rows
        captioned = Image.new("RGB", (w, h + CAPTION), (0, 0, 0))
        captioned.paste(im, (0, CAPTION))
        ImageDraw.Draw(captioned).text((3, 1), ", ".join(tags), fill=(255, 255, 255))
        im = captioned
    if max(im.size) > MAX_SIDE:
        im.thumbnail((MAX_SIDE, MAX_SIDE))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
