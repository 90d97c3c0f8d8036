"""Canonical shapes -> 'CVAT for images 1.1' XML, the file a CVAT user uploads by hand
(Actions > Upload annotations > CVAT 1.1) onto a task made from the same images.

The inverse of `labelloop.cvat.reader`, and tested as its round trip: boxes (rotation
turns around the box centre in CVAT, around the top-left corner here), polygons, points,
ellipses, tags and masks (CVAT's RLE: row-major run lengths over the mask's own box,
starting with background). Predictions go out with `source="auto"`, so CVAT shows them as
machine-made until an annotator touches them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.sax.saxutils import quoteattr

import numpy as np

from labelloop.domain import Box, Ellipse, Keypoint, Mask, Polygon, Shape, Tag
from labelloop.geometry import decode_mask

CVAT_VERSION = "1.1"


@dataclass
class CvatImage:
    name: str
    width: int
    height: int
    shapes: list[Shape] = field(default_factory=list)


def _num(v: float) -> str:
    return f"{v:.2f}"


def _attrs(**kv: object) -> str:
    return " ".join(f"{k}={quoteattr(str(v))}" for k, v in kv.items())


def _box(b: Box) -> str:
    x0, y0 = b.x, b.y
    if b.rotation:
        t = math.radians(b.rotation)
        cx = b.x + b.w / 2 * math.cos(t) - b.h / 2 * math.sin(t)
        cy = b.y + b.w / 2 * math.sin(t) + b.h / 2 * math.cos(t)
        x0, y0 = cx - b.w / 2, cy - b.h / 2
    extra = {"rotation": _num(b.rotation)} if b.rotation else {}
    return (
        f"<box {_attrs(label=b.label, source='auto', occluded=0, xtl=_num(x0), ytl=_num(y0))} "
        f"{_attrs(xbr=_num(x0 + b.w), ybr=_num(y0 + b.h), z_order=0, **extra)}></box>"
    )


def _points(points: Sequence[tuple[float, float]]) -> str:
    return ";".join(f"{_num(x)},{_num(y)}" for x, y in points)


def _mask(m: Mask) -> str | None:
    full = decode_mask(m.size, m.counts).astype(bool)
    ys, xs = np.nonzero(full)
    if not len(xs):
        return None
    left, top = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) - left + 1, int(ys.max()) - top + 1
    flat = full[top : top + h, left : left + w].reshape(-1)
    # Run lengths, starting with background (0 when the first pixel is foreground).
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    rle = ",".join(str(r) for r in runs)
    return (
        f"<mask {_attrs(label=m.label, source='auto', occluded=0, rle=rle)} "
        f"{_attrs(left=left, top=top, width=w, height=h, z_order=0)}></mask>"
    )


def shape_element(shape: Shape) -> str | None:
    """One shape as its CVAT element (None for an empty mask)."""
    if isinstance(shape, Box):
        return _box(shape)
    if isinstance(shape, Polygon | Keypoint):
        tag = "polygon" if isinstance(shape, Polygon) else "points"
        pts = _points(shape.points if isinstance(shape, Polygon) else [(shape.x, shape.y)])
        head = _attrs(label=shape.label, source="auto", occluded=0, points=pts, z_order=0)
        return f"<{tag} {head}></{tag}>"
    if isinstance(shape, Ellipse):
        geo = {"cx": shape.x, "cy": shape.y, "rx": shape.rx, "ry": shape.ry}
        extra = {"rotation": _num(shape.rotation)} if shape.rotation else {}
        return (
            f"<ellipse {_attrs(label=shape.label, source='auto', occluded=0)} "
            f"{_attrs(**{k: _num(v) for k, v in geo.items()}, z_order=0, **extra)}></ellipse>"
        )
    if isinstance(shape, Tag):
        return f"<tag {_attrs(label=shape.label, source='auto')}></tag>"
    if isinstance(shape, Mask):
        return _mask(shape)
    raise TypeError(f"no CVAT element for {type(shape).__name__}")


def cvat_xml(images: Sequence[CvatImage], labels: Sequence[str], task_name: str) -> str:
    """The whole annotations.xml for one task holding `images` (ids in the given order)."""
    now = datetime.now(UTC).isoformat()
    label_xml = "".join(
        f"<label><name>{_escape(name)}</name><type>any</type><attributes></attributes></label>"
        for name in labels
    )
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<annotations>",
        f"<version>{CVAT_VERSION}</version>",
        "<meta><task>",
        f"<name>{_escape(task_name)}</name><size>{len(images)}</size><mode>annotation</mode>",
        "<overlap>0</overlap><bugtracker></bugtracker>",
        f"<created>{now}</created><updated>{now}</updated>",
        f"<labels>{label_xml}</labels>",
        "</task>",
        f"<dumped>{now}</dumped></meta>",
    ]
    for i, img in enumerate(images):
        parts.append(f"<image {_attrs(id=i, name=img.name, width=img.width, height=img.height)}>")
        parts += [el for el in (shape_element(sh) for sh in img.shapes) if el]
        parts.append("</image>")
    parts.append("</annotations>")
    return "\n".join(parts) + "\n"


def _escape(text: str) -> str:
    return quoteattr(text)[1:-1]
