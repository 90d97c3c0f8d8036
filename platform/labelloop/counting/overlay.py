"""Overlay PNGs that show every counted object: its outline (or box) in its label's colour
and its index, so a count can be checked object by object against the image."""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from labelloop.domain import Box, Keypoint, Mask, Polygon, Shape, Tag
from labelloop.geometry import shape_bbox, shape_mask

# Distinct, colour-blind-friendly colours (Okabe-Ito), one per label in project order.
PALETTE = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (0, 0, 0),
]


LEGEND_PAD = 6


def legend_height(labels: Sequence[str], tagged: bool = False) -> int:
    """Rows of the strip above the image in an overlay: one line per label (and one for
    the image's class when it has one)."""
    return LEGEND_PAD + 12 * (len(labels) + tagged)


def draw_overlay(
    image: np.ndarray, shapes: Sequence[Shape], counts: dict[str, int], labels: Sequence[str]
) -> bytes:
    """PNG of the image with each object's box or outline and its index (1-based per
    label, in the label's colour), under a strip with the legend of the counts
    (`legend_height`)."""
    colour = {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(labels)}
    canvas = np.ascontiguousarray(image.copy())
    h, w = canvas.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    scale = max(0.3, min(h, w) / 1200)
    index: dict[str, int] = {}
    for sh in shapes:
        c = colour.get(sh.label, (255, 0, 0))
        if isinstance(sh, Box):
            p1 = (round(sh.x), round(sh.y))
            p2 = (round(sh.x + sh.w), round(sh.y + sh.h))
            cv2.rectangle(canvas, p1, p2, c, thick)
        elif isinstance(sh, Mask | Polygon):
            m = shape_mask(sh, h, w)
            if m is None:
                continue
            contours, _ = cv2.findContours(
                m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(canvas, contours, -1, c, thick)
        elif isinstance(sh, Keypoint):
            cv2.circle(canvas, (round(sh.x), round(sh.y)), 2 * thick + 1, c, thick)
        else:
            continue
        bbox = shape_bbox(sh)
        if bbox is None:
            continue
        index[sh.label] = index.get(sh.label, 0) + 1
        text = str(index[sh.label])
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
        org = (int(cx - tw / 2), int(cy + th / 2))
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, c, 1, cv2.LINE_AA)
    lines = [f"{lb}: {counts.get(lb, 0)}" for lb in labels]
    tags = [sh.label for sh in shapes if isinstance(sh, Tag)]
    if tags:
        lines.insert(0, f"class: {', '.join(tags)}")
    # The legend goes in a strip above the image, never over it: the objects under a
    # legend drawn on the image could not be checked against the count.
    line_h = 12
    strip = legend_height(labels, bool(tags))
    im = Image.new("RGB", (max(w, 8 + 7 * max(len(t) for t in lines)), h + strip), "white")
    im.paste(Image.fromarray(canvas), (0, strip))
    draw = ImageDraw.Draw(im)
    for i, text in enumerate(lines):
        lb = text.split(":")[0]
        draw.text((4, 3 + i * line_h), text, fill=colour.get(lb, (0, 0, 0)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
