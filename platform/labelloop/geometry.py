"""Rasterising canonical shapes and converting masks: the one place geometry lives.

Masks use pycocotools' compressed RLE (column-major), the same encoding COCO and
torchmetrics use, so nothing here invents a format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from labelloop.domain import Box, Ellipse, Keypoint, Mask, Polygon, Shape, Tag


def encode_mask(mask: np.ndarray) -> tuple[tuple[int, int], str]:
    """Binary (H, W) mask -> ((H, W), compressed RLE counts string)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]
    return (int(rle["size"][0]), int(rle["size"][1])), counts.decode("ascii") if isinstance(
        counts, bytes
    ) else counts


def decode_mask(size: Sequence[int], counts: str) -> np.ndarray:
    """Compressed RLE -> bool (H, W)."""
    rle = {"size": [int(size[0]), int(size[1])], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def encode_instances(inst: np.ndarray, ids: Sequence[int]) -> list[tuple[tuple[int, int], str]]:
    """`encode_mask` of `inst == id` for each id of an instance map (int (H, W)), each read
    only within the columns its bounding box spans: per-cell masks then cost the cells'
    strips, not a full-image compare and scan per cell (the runs before and after the strip
    are all background, so they are added, not counted)."""
    from scipy import ndimage

    ids = [int(j) for j in ids]
    if not ids:
        return []
    h, w = inst.shape
    boxes = ndimage.find_objects(inst, max_label=max(ids))
    out: list[tuple[tuple[int, int], str]] = []
    for j in ids:
        box = boxes[j - 1] if j <= len(boxes) else None
        runs = [h * w]
        if box is not None:
            cols = box[1]
            strip = (inst[:, cols] == j).ravel(order="F")
            edges = np.flatnonzero(strip[1:] != strip[:-1]) + 1
            runs = np.diff(np.concatenate(([0], edges, [strip.size]))).tolist()
            if strip[0]:
                runs.insert(0, 0)  # RLE counts start with a run of background
            runs[0] += cols.start * h
            after = (w - cols.stop) * h
            if len(runs) % 2:  # the strip ends in background
                runs[-1] += after
            elif after:
                runs.append(after)
        counts = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)["counts"]
        out.append(((h, w), counts.decode("ascii") if isinstance(counts, bytes) else counts))
    return out


def mask_shape(mask: np.ndarray, label: str) -> Mask:
    size, counts = encode_mask(mask)
    return Mask(label=label, size=size, counts=counts)


def mask_polygons(mask: Mask, min_area: float = 4.0, tolerance: float = 1.0) -> list[Polygon]:
    """A mask as polygons, one per outer contour (holes dropped): what a project that
    draws polygons is shown as pre-annotations. `tolerance` is the Douglas-Peucker
    distance in pixels; contours smaller than `min_area` pixels are left out."""
    import cv2

    m = decode_mask(mask.size, mask.counts).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        if cv2.contourArea(c) < min_area:
            continue
        pts = cv2.approxPolyDP(c, tolerance, True).reshape(-1, 2)
        if len(pts) >= 3:
            out.append(
                Polygon(
                    label=mask.label,
                    attributes=mask.attributes,
                    points=[(float(x), float(y)) for x, y in pts],
                )
            )
    return out


def box_corners(b: Box) -> list[tuple[float, float]]:
    """Four corners of a (possibly rotated) box; rotation is around the top-left corner."""
    t = math.radians(b.rotation)
    c, s = math.cos(t), math.sin(t)
    local = [(0.0, 0.0), (b.w, 0.0), (b.w, b.h), (0.0, b.h)]
    return [(b.x + px * c - py * s, b.y + px * s + py * c) for px, py in local]


def ellipse_points(e: Ellipse, n: int = 64) -> list[tuple[float, float]]:
    t = math.radians(e.rotation)
    c, s = math.cos(t), math.sin(t)
    pts = []
    for i in range(n):
        a = 2 * math.pi * i / n
        px, py = e.rx * math.cos(a), e.ry * math.sin(a)
        pts.append((e.x + px * c - py * s, e.y + px * s + py * c))
    return pts


def _polygon_mask(points: Iterable[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (the COCO / Label Studio convention).

    PIL's polygon fill includes both edges and grows every shape by a pixel, which biases
    small cells such as platelets badly; testing centres within the bounding box is exact
    and still cheap."""
    out = np.zeros((height, width), dtype=bool)
    pts = np.asarray([(float(x), float(y)) for x, y in points], dtype=np.float64)
    if len(pts) < 3:
        return out
    x0 = max(int(np.floor(pts[:, 0].min())), 0)
    x1 = min(int(np.ceil(pts[:, 0].max())), width)
    y0 = max(int(np.floor(pts[:, 1].min())), 0)
    y1 = min(int(np.ceil(pts[:, 1].max())), height)
    if x1 <= x0 or y1 <= y0:
        return out
    ys, xs = np.mgrid[y0:y1, x0:x1]
    centres = np.column_stack([xs.ravel() + 0.5, ys.ravel() + 0.5])
    from matplotlib.path import Path as MplPath  # here: importing it costs every CLI start

    inside = MplPath(pts).contains_points(centres)
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, x1 - x0)
    return out


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray | None:
    """Region covered by a shape as bool (H, W); None for shapes without area (points, tags)."""
    if isinstance(shape, Mask):
        if tuple(shape.size) != (height, width):
            raise ValueError(
                f"mask size {tuple(shape.size)} does not match image {(height, width)}"
            )
        return decode_mask(shape.size, shape.counts)
    if isinstance(shape, Polygon):
        return _polygon_mask(shape.points, height, width)
    if isinstance(shape, Box):
        return _polygon_mask(box_corners(shape), height, width)
    if isinstance(shape, Ellipse):
        return _polygon_mask(ellipse_points(shape), height, width)
    if isinstance(shape, Keypoint | Tag):
        return None
    raise TypeError(f"unknown shape {type(shape).__name__}")


def shape_bbox(shape: Shape) -> tuple[float, float, float, float] | None:
    """Axis-aligned (x0, y0, x1, y1) of a shape; None for tags."""
    if isinstance(shape, Box):
        xs, ys = zip(*box_corners(shape), strict=True)
    elif isinstance(shape, Polygon):
        if not shape.points:
            return None
        xs, ys = zip(*shape.points, strict=True)
    elif isinstance(shape, Ellipse):
        xs, ys = zip(*ellipse_points(shape), strict=True)
    elif isinstance(shape, Keypoint):
        return (shape.x, shape.y, shape.x, shape.y)
    elif isinstance(shape, Mask):
        m = decode_mask(shape.size, shape.counts)
        rows, cols = np.any(m, axis=1), np.any(m, axis=0)
        if not rows.any():
            return None
        y0, y1 = np.where(rows)[0][[0, -1]]
        x0, x1 = np.where(cols)[0][[0, -1]]
        return (float(x0), float(y0), float(x1 + 1), float(y1 + 1))
    else:
        return None
    return (min(xs), min(ys), max(xs), max(ys))


def rasterize_classes(
    shapes: Sequence[Shape],
    labels: Sequence[str],
    height: int,
    width: int,
    kinds: frozenset[str] = frozenset({"mask", "polygon", "ellipse"}),
) -> np.ndarray:
    """Semantic label map (H, W) uint8: 0 = background, i + 1 = labels[i].

    Only region shapes of `kinds` count (boxes are excluded by default: in a segmentation
    project they are detection hints, not outlines). Later shapes paint over earlier
    ones, except that smaller regions are painted last so a small cell touching a large
    one keeps its pixels.
    """
    index = {name: i + 1 for i, name in enumerate(labels)}
    out = np.zeros((height, width), dtype=np.uint8)
    regions = []
    for s in shapes:
        if s.kind not in kinds or s.label not in index:
            continue
        m = shape_mask(s, height, width)
        if m is not None and m.any():
            regions.append((int(m.sum()), index[s.label], m))
    for _, cls, m in sorted(regions, key=lambda r: -r[0]):
        out[m] = cls
    return out


def instance_count(label_map: np.ndarray, class_index: int, min_area: int = 4) -> int:
    """Connected components of one class in a label map, ignoring specks below min_area."""
    from scipy import ndimage

    comp, n = ndimage.label(label_map == class_index)
    if n == 0:
        return 0
    areas = np.bincount(comp.ravel())[1:]
    return int((areas >= min_area).sum())
