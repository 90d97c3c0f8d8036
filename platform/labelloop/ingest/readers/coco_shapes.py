"""One COCO annotation -> canonical shapes.

Everything pycocotools is handed is validated first: its C code trusts RLE counts and
polygon coordinates, and a lying count or an absurd coordinate would corrupt memory or
allocate without bound instead of failing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pycocotools import mask as mask_utils

from labelloop.domain import Box, Keypoint, Mask, Polygon, Shape
from labelloop.errors import InputError

MAX_SIDE = 1 << 20
MAX_MASK_PIXELS = 1 << 28  # masks are decoded whole downstream; also keeps counts < 2**32
MAX_OUTLINE = 2_000_000  # pixels of outline pycocotools may trace for one object (memory)
MAX_INT = 1 << 53

Attrs = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Category:
    name: str
    keypoints: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageInfo:
    """The declared size of an image (None when the entry does not say)."""

    width: int | None
    height: int | None
    file: str
    record: str

    @classmethod
    def from_entry(cls, raw: dict, *, file: str, record: str) -> ImageInfo:
        sides = []
        for key in ("width", "height"):
            value = raw.get(key)
            if value is None:
                sides.append(None)
            elif _is_int(value) and 0 < value <= MAX_SIDE:
                sides.append(int(value))
            else:
                raise InputError(
                    f"image {key} {value!r} is not a usable size", file=file, record=record
                )
        return cls(sides[0], sides[1], file, record)


@dataclass(frozen=True)
class _At:
    image: ImageInfo
    where: str

    def error(self, reason: str) -> InputError:
        return InputError(reason, file=self.image.file, record=self.where)


def id_key(value: object) -> str | None:
    """COCO ids are ints, some tools write strings (or 1.0); all name the same thing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str) and str(value) != "":
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


def _is_num(v: object) -> bool:
    """A JSON number a float can hold exactly enough (ijson gives ints of any size)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) <= MAX_INT
    return isinstance(v, float) and math.isfinite(v)


def _is_int(v: object) -> bool:
    return _is_num(v) and float(v).is_integer()  # type: ignore[arg-type]


def annotation_shapes(
    ann: Any,
    seq: int,
    image: ImageInfo,
    categories: dict[str, Category],
    notes: list[str] | None = None,
) -> list[Shape]:
    """The region (segmentation, else the bbox) and the labelled keypoints of one object.
    What is read otherwise than the file may mean goes into `notes` (the record's
    warnings): a crowd region kept as one object, a pose's bbox left out."""
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    ident = ann_id if isinstance(ann_id, int | str) and not isinstance(ann_id, bool) else None
    at = _At(image, f"{image.record} / annotation {ident if ident is not None else f'#{seq}'}")
    if not isinstance(ann, dict):
        raise at.error("annotation is not an object")
    cat_id = ann.get("category_id")
    cat = categories.get(id_key(cat_id) or "")
    if cat is None:
        raise at.error(f"category {cat_id!r} is not in categories")
    attrs = _attributes(ann.get("attributes"))
    said = notes if notes is not None else []
    if _crowd(ann.get("iscrowd"), at):
        attrs["iscrowd"] = True
        said.append(
            f"{at.where}: an iscrowd region (several {cat.name} objects under one outline) "
            "is kept as one object; counts and instance scores take it as one"
        )
    bbox = _bbox(ann.get("bbox"), at)
    region = _region(ann.get("segmentation"), cat.name, attrs, at)
    points = _keypoints(ann.get("keypoints"), cat, attrs, ident if ident is not None else seq, at)
    shapes: list[Shape] = []
    if region is not None:
        shapes.append(region)
    elif not points:
        if bbox is None:
            raise at.error("annotation has no segmentation, bbox or keypoints")
        shapes.append(_box(bbox, cat.name, attrs, at))
    elif bbox is not None and bbox[2] * bbox[3] > 0 and not _spans(bbox, points):
        # A pose's own box (a skeleton's object): the points are its shapes here. A box
        # that only spans the points (Label Studio writes one) says nothing more.
        said.append(
            f"{at.where}: its bbox is left out; its {len(points)} labelled keypoints are read"
        )
    return shapes + points


def _spans(bbox: tuple[float, float, float, float], points: list[Keypoint]) -> bool:
    """Whether `bbox` is the extent of `points`, to a pixel (exporters round)."""
    xs, ys = [p.x for p in points], [p.y for p in points]
    extent = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
    return all(abs(a - b) <= 1.0 for a, b in zip(bbox, extent, strict=True))


def _attributes(raw: object) -> Attrs:
    """Tool-specific flags (CVAT writes occluded, rotation, its own attributes here)."""
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str | bool) or _is_num(v)}


def _crowd(raw: object, at: _At) -> bool:
    if raw in (None, 0, False, "0", "false", "False", ""):
        return False
    if raw in (1, True, "1", "true", "True"):
        return True
    raise at.error(f"iscrowd {raw!r} is neither 0 nor 1")


def _bbox(raw: object, at: _At) -> tuple[float, float, float, float] | None:
    if raw is None or raw == []:
        return None
    if not (isinstance(raw, list) and len(raw) == 4 and all(_is_num(v) for v in raw)):
        raise at.error(f"bbox {str(raw)[:80]} is not [x, y, width, height]")
    x, y, w, h = (float(v) for v in raw)
    if w < 0 or h < 0:
        raise at.error(f"bbox {raw} has a negative size")
    return x, y, w, h


def _box(bbox: tuple[float, float, float, float], label: str, attrs: Attrs, at: _At) -> Box:
    """CVAT's COCO export keeps a rotated box as its unrotated bbox plus a `rotation`
    attribute (degrees, around the centre); the canonical box turns around its corner."""
    x, y, w, h = bbox
    rotation = attrs.get("rotation", 0.0)
    if not _is_num(rotation) or not rotation:
        return Box(label=label, x=x, y=y, w=w, h=h, attributes=attrs)
    attrs = {k: v for k, v in attrs.items() if k != "rotation"}
    t = math.radians(float(rotation))
    cx, cy = x + w / 2, y + h / 2
    x = cx - w / 2 * math.cos(t) + h / 2 * math.sin(t)
    y = cy - w / 2 * math.sin(t) - h / 2 * math.cos(t)
    return Box(label=label, x=x, y=y, w=w, h=h, rotation=float(rotation), attributes=attrs)


def _region(raw: object, label: str, attrs: Attrs, at: _At) -> Shape | None:
    """One polygon -> Polygon; several parts of one object -> one merged Mask (so an
    object split by an occluder still counts once); RLE -> Mask."""
    if raw is None or raw == [] or raw == {}:
        return None
    if isinstance(raw, dict):
        return _rle(raw, label, attrs, at)
    if not isinstance(raw, list):
        raise at.error("segmentation is neither polygons nor RLE")
    parts = [raw] if raw and all(not isinstance(v, list) for v in raw) else raw
    polygons = [_polygon(p, at) for p in parts if p != []]
    if not polygons:
        return None
    if len(polygons) == 1:
        pts = polygons[0]
        return Polygon(
            label=label, points=list(zip(pts[0::2], pts[1::2], strict=True)), attributes=attrs
        )
    width, height = _size_for_mask(at)
    outline = sum(
        max(abs(p[i] - p[i - 2]), abs(p[i + 1] - p[i - 1]))
        for p in polygons
        for i in range(0, len(p), 2)
    )
    if outline > MAX_OUTLINE:
        raise at.error(f"polygon outline of {outline:.0f} pixels is implausibly long")
    merged = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return _mask_from_rle(merged, label, attrs, at)


def _polygon(raw: object, at: _At) -> list[float]:
    if (
        not isinstance(raw, list)
        or len(raw) < 6
        or len(raw) % 2
        or not all(_is_num(v) for v in raw)
    ):
        raise at.error(f"polygon {str(raw)[:80]} is not [x1, y1, x2, y2, x3, y3, ...]")
    # pycocotools walks every pixel of the outline: a far-off vertex is refused, not drawn
    limit = 2 * max(at.image.width or 0, at.image.height or 0, MAX_SIDE // 16) + 1000
    if any(abs(v) > limit for v in raw):
        raise at.error("polygon has a vertex far outside the image")
    return [float(v) for v in raw]


def _size_for_mask(at: _At) -> tuple[int, int]:
    width, height = at.image.width, at.image.height
    if width is None or height is None:
        raise at.error("the image entry has no width/height, needed to draw a multi-part polygon")
    if width * height > MAX_MASK_PIXELS:
        raise at.error(f"image {width}x{height} is too large for a mask")
    return width, height


def _rle(raw: dict, label: str, attrs: Attrs, at: _At) -> Mask:
    size, counts = raw.get("size"), raw.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise at.error(f"RLE size {str(size)[:40]} is not [height, width]")
    h, w = int(size[0]), int(size[1])
    declared = (at.image.height, at.image.width)
    if None not in declared and (h, w) != declared:
        raise at.error(f"RLE size {w}x{h} disagrees with the image's {declared[1]}x{declared[0]}")
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or h * w > MAX_MASK_PIXELS:
        raise at.error(f"RLE size {w}x{h} is not a usable mask size")
    if isinstance(counts, str):
        runs = _string_counts(counts, at)
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        runs = [int(v) for v in counts]
    else:
        raise at.error("RLE counts are neither a list of integers nor a string")
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise at.error(f"RLE counts cover {sum(runs)} pixels, the {w}x{h} mask has {h * w}")
    rle = mask_utils.frPyObjects({"counts": runs, "size": [h, w]}, h, w)
    return _mask_from_rle(rle, label, attrs, at)


def _string_counts(s: str, at: _At) -> list[int]:
    """Decode COCO's compressed counts (pycocotools' rleFrString) with bounds checks: 6-bit
    characters from '0', 5 data bits, a continuation bit, deltas from the third run on."""
    runs: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48 if p < n else -1
            if not 0 <= c < 64 or k > 6:
                raise at.error("RLE counts string is corrupt")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _mask_from_rle(rle: dict, label: str, attrs: Attrs, at: _At) -> Mask:
    if float(mask_utils.area(rle)) <= 0:
        raise at.error("mask has no foreground pixels")
    counts = rle["counts"]
    text = counts.decode("ascii") if isinstance(counts, bytes) else str(counts)
    return Mask(
        label=label, size=(int(rle["size"][0]), int(rle["size"][1])), counts=text, attributes=attrs
    )


def _keypoints(
    raw: object, cat: Category, attrs: Attrs, instance: int | str, at: _At
) -> list[Shape]:
    """Labelled points (v > 0). A category that names one point (a cell centre) labels it
    with the category; one that names several (a skeleton, or Label Studio's COCO export
    of point labels) labels each point with its own name."""
    if raw is None or raw == []:
        return []
    if not (isinstance(raw, list) and len(raw) % 3 == 0 and all(_is_num(v) for v in raw)):
        raise at.error("keypoints are not [x1, y1, v1, x2, y2, v2, ...]")
    count = len(raw) // 3
    names = cat.keypoints
    if names and len(names) != count:
        raise at.error(f"{count} keypoints, but category {cat.name!r} names {len(names)}")
    if not names and sum(1 for v in raw[2::3] if v) > 1:
        # Each point would be one more object of the category, and which is which lost.
        raise at.error(
            f"{count} keypoints, but category {cat.name!r} names none "
            '(its "keypoints" list says which point is which)'
        )
    by_name = len(names) > 1
    out: list[Shape] = []
    for i in range(count):
        x, y, v = raw[3 * i : 3 * i + 3]
        if v not in (0, 1, 2):
            raise at.error(f"keypoint {i + 1} visibility {v} is not 0, 1 or 2")
        if v == 0:
            continue
        own: Attrs = {**attrs, "instance": instance, "visibility": int(v)}
        if by_name:
            own["category"] = cat.name
        elif names:
            own["keypoint"] = names[0]
        label = names[i] if by_name else cat.name
        out.append(Keypoint(label=label, x=float(x), y=float(y), attributes=own))
    return out
