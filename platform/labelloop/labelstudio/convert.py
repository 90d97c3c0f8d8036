"""Label Studio results <-> canonical shapes.

Label Studio stores geometry in percent of the original image (x, y, width, height,
points, radii) and brush strokes as its own RLE of RGBA pixels. Canonical shapes are in
pixels, so every conversion needs the original image size; a result without it is an
input error rather than a guess. Brush RLE goes through label-studio-sdk's codec so the
bytes are exactly what the Label Studio frontend reads and writes.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from labelloop.domain import Box, Ellipse, Keypoint, Mask, Polygon, Shape, Tag, trusted_shape
from labelloop.errors import ConfigError, InputError
from labelloop.geometry import decode_mask, mask_shape
from labelloop.imaging import DEFAULT_MAX_PIXELS

# Canonical kind <-> result type of the *Labels control that draws it.
RESULT_TYPES = {
    "box": "rectanglelabels",
    "polygon": "polygonlabels",
    "mask": "brushlabels",
    "keypoint": "keypointlabels",
    "ellipse": "ellipselabels",
    "tag": "choices",
}
_KIND_OF = {t: k for k, t in RESULT_TYPES.items() if k != "tag"}
# Bare drawing tools (<Rectangle>, <Brush>...): a region's label, when it has one, is a
# `labels` result of the same id beside it.
_TOOLS = {t.removesuffix("labels") for t in _KIND_OF}

# Brush RLE decodes to width*height*4 bytes; the same pixel cap as image decoding.
MAX_BRUSH_PIXELS = DEFAULT_MAX_PIXELS


class _Where:
    """File and record of the result being converted, for error messages; the record's
    name is spelled out only when an error needs it (an ingest converts millions)."""

    def __init__(self, file: str, record: str, result: object = None):
        self.file, self._record, self._result = file, record, result

    @property
    def record(self) -> str:
        if self._result is None:
            return self._record
        return f"{self._record} / result {self._result}"

    def error(self, reason: str) -> InputError:
        return InputError(reason, file=self.file, record=self.record)


def results_to_shapes(
    results: list[dict],
    *,
    file: str,
    record: str,
    image_size: tuple[int, int] | None = None,
    unlabeled: list[str] | None = None,
) -> list[Shape]:
    """Convert one annotation's `result` list into canonical shapes in pixels.

    `record` names the annotation ("task 12 / annotation 3"); errors append the result id.
    `image_size` (width, height) is used only for results that lack original_width/height,
    as in hand-written tasks. Relations, text areas and other result types are skipped,
    and so are bare tool regions (`rectangle`...) whose label is a `labels` result of the
    same id, which is read instead; a region of a `*labels` type not read, or with several
    labels, is an error, and one with none (a label deselected, or a tool region no
    `labels` result names) is left out with a line in `unlabeled` (an error when no list
    is given).

    A per-region `<Choices>` result (the id of a region, or the region's geometry in its
    value) is an attribute of that region, named by the control (`from_name`), never a
    tag of the image; one whose region is missing, and a bare tool region classed by
    choices alone, are left out the same way: a choice may be a property ("blurry") as
    well as a class, so it is not taken as a label unasked.
    """
    if not isinstance(results, list):
        raise InputError("annotation result is not a list", file=file, record=record)
    shapes: list[Shape] = []
    labelled: set[str | int] = set()
    regions: set[str | int] = set()
    for r in results:
        if isinstance(r, dict) and _named(rid := r.get("id")):
            rtype = str(r.get("type", "")).lower()
            if rtype.endswith("labels"):
                labelled.add(rid)
            if (rtype in _TOOLS or rtype.endswith("labels")) and _on_image(r):
                regions.add(rid)
    region_choices = _region_choices(results, regions, file, record, unlabeled)
    for i, r in enumerate(results):
        rid = r.get("id") if isinstance(r, dict) else None
        named = _named(rid)
        where = _Where(file, record, rid if named else f"#{i}")
        if not isinstance(r, dict):
            raise where.error("result is not an object")
        tool = str(r.get("type", "")).lower()
        if tool in _TOOLS and _on_image(r):
            if not named or rid not in labelled:  # drawn, never labelled: no cell to count
                said = f"{tool} region has no labels result of its id"
                if named and rid in region_choices:
                    chosen = "; ".join(f"{k}: {v}" for k, v in region_choices[rid].items())
                    said += f" (its per-region choices, {chosen}, are not read as a class)"
                shapes.extend(_no_label(where, said, unlabeled))
            continue
        if tool == "choices" and _per_region(r, regions):
            continue  # read into its region's attributes above
        extra = region_choices.get(rid, {}) if named else {}
        shapes.extend(_result_shapes(r, where, image_size, unlabeled, extra))
    return shapes


def _named(rid: object) -> bool:
    return isinstance(rid, str | int) and not isinstance(rid, bool)


def _per_region(r: dict, regions: set[str | int]) -> bool:
    """Whether a `choices` result classifies one region (`perRegion="true"`): Label Studio
    gives it the region's id and copies the region's geometry into its value."""
    rid, value = r.get("id"), r.get("value")
    return (_named(rid) and rid in regions) or (
        isinstance(value, dict) and _geometry_kind(value) is not None
    )


def _region_choices(
    results: list, regions: set[str | int], file: str, record: str, unlabeled: list[str] | None
) -> dict[str | int, dict[str, str]]:
    """Per region id, its per-region choices as attributes {control name: "a, b"}."""
    out: dict[str | int, dict[str, str]] = {}
    for i, r in enumerate(results):
        if not (isinstance(r, dict) and str(r.get("type", "")).lower() == "choices"):
            continue
        if not _per_region(r, regions):
            continue
        rid = r.get("id")
        where = _Where(file, record, rid if _named(rid) else f"#{i}")
        value = r.get("value")
        if not isinstance(value, dict):
            raise where.error("choices result has no value object")
        chosen = ", ".join(_labels(value, "choices", where))
        if not (_named(rid) and rid in regions):
            said = f"per-region choices ({chosen}) have no region of their id"
            _no_label(where, said, unlabeled)
            continue
        control = str(r.get("from_name") or "choices")
        if control in ("ls_id", "score"):
            raise where.error(f"per-region choices control is named {control!r}, a reserved name")
        attrs = out.setdefault(rid, {})
        if control in attrs:
            raise where.error(f"region has two per-region results of control {control!r}")
        attrs[control] = chosen
    return out


def _no_label(where: _Where, said: str, unlabeled: list[str] | None) -> list[Shape]:
    """A region without a label (`said` how): left out with a line in `unlabeled`, else
    an error."""
    if unlabeled is None:
        raise where.error(f"{said}; expected one")
    unlabeled.append(f"{where.record}: {said}; left out")
    return []


def _result_shapes(
    r: dict,
    where: _Where,
    image_size: tuple[int, int] | None,
    unlabeled: list[str] | None,
    extra: dict[str, str] | None = None,
) -> list[Shape]:
    rtype = r.get("type")
    if not isinstance(rtype, str):
        raise where.error("result has no type")
    rtype = rtype.lower()
    if rtype not in _KIND_OF and rtype not in ("choices", "labels"):
        if rtype.endswith("labels") and _on_image(r):  # an image region of a tool not read
            read = ", ".join(sorted(_KIND_OF))
            raise where.error(f"result type {rtype!r} is not read (labelloop reads {read})")
        return []  # relations, text areas, ratings, text or time-series spans
    value = r.get("value")
    if not isinstance(value, dict):
        raise where.error(f"{rtype} result has no value object")
    attrs = _attributes(r, where)
    if extra:
        attrs.update(extra)
    if rtype == "choices":
        return [Tag(label=c, attributes=attrs) for c in _labels(value, "choices", where)]
    labels = _labels(value, rtype, where)
    kind = _KIND_OF.get(rtype) or _geometry_kind(value)
    if kind is None:
        return []  # text-span labels: nothing of an image's
    if not labels:
        # Label Studio lets an annotator deselect a region's label: the region is left out,
        # and said so (`unlabeled` collects the warnings), never dropped unseen.
        return _no_label(where, f"{rtype} region has no label", unlabeled)
    if len(labels) != 1:
        # Counted once per class, a region with several would add cells that are not there.
        raise where.error(
            f"{rtype} region has {len(labels)} labels ({', '.join(labels)}); expected one "
            '(a control with choice="multiple"; keep one per region)'
        )
    width, height = _image_size(r, image_size, where)
    if kind == "box" and (geo := _plain_box(value, width, height)) is not None:
        cls: type[Shape] = Box
    elif kind == "box":
        geo = {
            "x": _num(value, "x", where) * width / 100,
            "y": _num(value, "y", where) * height / 100,
            "w": _num(value, "width", where, minimum=0) * width / 100,
            "h": _num(value, "height", where, minimum=0) * height / 100,
            "rotation": _num(value, "rotation", where, default=0.0),
        }
        cls = Box
    elif kind == "polygon":
        geo = {"points": _points(value, width, height, where)}
        cls = Polygon
    elif kind == "ellipse":
        geo = {
            "x": _num(value, "x", where) * width / 100,
            "y": _num(value, "y", where) * height / 100,
            "rx": _num(value, "radiusX", where, minimum=0) * width / 100,
            "ry": _num(value, "radiusY", where, minimum=0) * height / 100,
            "rotation": _num(value, "rotation", where, default=0.0),
        }
        cls = Ellipse
    elif kind == "keypoint":
        geo = {
            "x": _num(value, "x", where) * width / 100,
            "y": _num(value, "y", where) * height / 100,
        }
        cls = Keypoint
    else:
        fmt = value.get("format", "rle")
        if fmt != "rle":
            raise where.error(f"brush format {fmt!r} is not supported (only 'rle')")
        mask = decode_brush(value.get("rle"), width, height, file=where.file, record=where.record)
        m = mask_shape(mask, "_")
        geo = {"size": m.size, "counts": m.counts}
        cls = Mask
    # Every field was checked above (labels, finite numbers, mask size): building the
    # shapes without pydantic's validation saves a second pass over each number.
    return [trusted_shape(cls, label=labels[0], attributes=dict(attrs), **geo)]


def _plain_box(value: dict, width: int, height: int) -> dict[str, Any] | None:
    """A box whose numbers are all plain finite floats (or ints) with a non-negative size,
    converted in one go: most boxes of an export. None sends the box through `_num`,
    which names what is wrong."""
    x, y, w, h = value.get("x"), value.get("y"), value.get("width"), value.get("height")
    rot = value.get("rotation", 0.0)
    if not all(type(v) in _PLAIN for v in (x, y, w, h, rot)):
        return None
    try:  # as `_num` reads them: an int is taken as a float, a huge one is refused
        x, y, w, h, rot = float(x), float(y), float(w), float(h), float(rot)
    except OverflowError:
        return None
    total = x + y + w + h + rot  # finite iff every term is (barring an overflow: refused)
    if total - total != 0 or w < 0 or h < 0:
        return None
    return {
        "x": x * width / 100,
        "y": y * height / 100,
        "w": w * width / 100,
        "h": h * height / 100,
        "rotation": rot,
    }


_PLAIN = (float, int)  # exact types: bool, a subclass of int, is not a number here
_LARGE = 1 << 31


def _on_image(r: dict) -> bool:
    """Whether a result marks a region of an image: Label Studio gives those the image's
    size (text, paragraph and time-series spans carry none), or they hold geometry."""
    value = r.get("value")
    return "original_width" in r or (isinstance(value, dict) and _geometry_kind(value) is not None)


def _geometry_kind(value: dict) -> str | None:
    """Kind of a generic `labels` result, told by which geometry keys it carries."""
    if "rle" in value:
        return "mask"
    if "points" in value:
        return "polygon"
    if "radiusX" in value or "radiusY" in value:
        return "ellipse"
    if "x" in value and "y" in value:
        return "box" if "height" in value else "keypoint"
    return None


def _attributes(r: dict, where: _Where) -> dict[str, str | int | float | bool]:
    attrs: dict[str, str | int | float | bool] = {}
    rid = r.get("id")
    if isinstance(rid, str | int) and not isinstance(rid, bool):
        attrs["ls_id"] = str(rid)
    if "score" in r and r["score"] is not None:
        attrs["score"] = _num(r, "score", where)
    return attrs


def _labels(value: dict, key: str, where: _Where) -> list[str]:
    labels = value.get(key, [])
    if type(labels) is list and len(labels) == 1 and type(labels[0]) is str and labels[0]:
        return labels  # the usual single label, checked without a generator
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise where.error(f"value.{key} must be a list of non-empty strings")
    return labels


def _num(
    d: dict, key: str, where: _Where, *, default: float | None = None, minimum: float | None = None
) -> float:
    v = d.get(key)
    if v is None:
        if default is not None:
            return default
        raise where.error(f"missing numeric {key!r}")
    f = _finite(v)
    if f is None:
        raise where.error(f"{key!r} is not a finite number: {v!r}")
    if minimum is not None and f < minimum:
        raise where.error(f"{key!r} is negative: {v!r}")
    return f


def _finite(v: object) -> float | None:
    """float(v) for real JSON numbers; None for bools, strings, inf/nan and huge ints."""
    if type(v) is float:  # most numbers of an export: checked without a conversion
        return v if math.isfinite(v) else None
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _points(value: dict, width: int, height: int, where: _Where) -> list[tuple[float, float]]:
    pts = value.get("points")
    if not isinstance(pts, list):
        raise where.error("polygon points must be a list of [x, y] pairs")
    out = []
    for p in pts:
        if not isinstance(p, list | tuple) or len(p) != 2:
            raise where.error(f"polygon point {p!r} is not an [x, y] pair")
        x, y = _finite(p[0]), _finite(p[1])
        if x is None or y is None:  # _num names what is wrong
            pair = {"x": p[0], "y": p[1]}
            x, y = _num(pair, "x", where), _num(pair, "y", where)
        out.append((x * width / 100, y * height / 100))  # as before: revisions hash these
    if len(out) < 3:
        raise where.error(f"polygon has {len(out)} points; a region needs 3 or more")
    return out


def _image_size(r: dict, fallback: tuple[int, int] | None, where: _Where) -> tuple[int, int]:
    ow, oh = r.get("original_width"), r.get("original_height")
    if type(ow) is int and type(oh) is int and 0 < ow < _LARGE and 0 < oh < _LARGE:
        return ow, oh  # the usual case, without a float round trip
    if ow is None or oh is None:
        if fallback is None:
            raise where.error(
                "missing original_width/original_height, needed to turn percent into pixels"
            )
        ow, oh = fallback
    sizes = []
    for key, v in (("original_width", ow), ("original_height", oh)):
        f = _finite(v)
        if f is None or f <= 0 or f != int(f):
            raise where.error(f"{key} must be a positive integer, got {v!r}")
        sizes.append(int(f))
    return sizes[0], sizes[1]


def decode_brush(
    rle: object, width: int, height: int, *, file: str = "<results>", record: str = ""
) -> np.ndarray:
    """Label Studio brush RLE -> bool (H, W) mask.

    The RLE holds RGBA bytes; the alpha channel is the stroke. The frontend antialiases
    edges, so a pixel belongs to the mask at alpha >= 128; a layer written with 0/1 values
    (as some scripts do with mask2rle) has no such pixel, and then any alpha > 0 counts.
    """
    where = _Where(file, record)
    if not isinstance(rle, list) or len(rle) < 7:
        raise where.error("brush rle must be a list of at least 7 byte values")
    if not all(type(b) is int and 0 <= b <= 255 for b in rle):
        raise where.error("brush rle must hold integers 0..255")
    data = bytes(rle)
    pixels = width * height
    if pixels > MAX_BRUSH_PIXELS:
        raise where.error(f"image {width}x{height} is too large for a brush mask")
    num = int.from_bytes(data[:4], "big")
    if num != pixels * 4:
        raise where.error(
            f"brush rle holds {num} values but a {width}x{height} RGBA image needs {pixels * 4}"
        )
    from label_studio_sdk.converter.brush import decode_rle

    try:
        flat = decode_rle(data)
    except (ValueError, IndexError, OverflowError, TypeError) as exc:
        raise where.error(f"corrupt brush rle ({exc})") from exc
    if flat.size != num:
        raise where.error(f"brush rle decoded to {flat.size} values, expected {num}")
    alpha = flat.reshape(height, width, 4)[:, :, 3]
    peak = int(alpha.max())
    return alpha >= 128 if peak >= 128 else alpha > 0


def encode_brush(mask: np.ndarray) -> list[int]:
    """bool (H, W) mask -> Label Studio brush RLE, fully opaque so the frontend shows it."""
    from label_studio_sdk.converter.brush import mask2rle

    rle = mask2rle(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))
    return [int(b) for b in rle]


def shapes_to_results(
    shapes: Sequence[Shape],
    width: int,
    height: int,
    *,
    controls: dict[str, str],
    to_name: str = "image",
) -> list[dict]:
    """Canonical shapes -> Label Studio results (for annotations or predictions).

    `controls` maps a shape kind to the *Labels / Choices control name that draws it
    (see DEFAULT_CONTROLS). All tags for one Choices control share one result, as the
    frontend expects. Result ids reuse the `ls_id` attribute when it is unique, otherwise
    they derive from the shape, so the same shapes always give the same JSON.
    """
    for key, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise InputError(f"image {key} must be a positive integer, got {v!r}")
    used: set[str] = set()
    results: list[dict] = []
    tags: dict[str, list[Tag]] = {}
    for i, s in enumerate(shapes):
        control = controls.get(s.kind)
        if control is None:
            raise ConfigError(
                f"no Label Studio control for {s.kind} shapes (have {sorted(controls)})"
            )
        if isinstance(s, Tag):
            tags.setdefault(control, []).append(s)
            continue
        value = _shape_value(s, width, height, i)
        rtype = RESULT_TYPES[s.kind]
        value[rtype] = [s.label]
        results.append(
            _result(
                _result_id(s, i, used),
                rtype,
                control,
                to_name,
                width,
                height,
                value,
                s.attributes.get("score"),
            )
        )
    for control, group in tags.items():
        value = {"choices": [t.label for t in group]}
        results.append(
            _result(
                _result_id(group[0], len(results), used),
                "choices",
                control,
                to_name,
                width,
                height,
                value,
                group[0].attributes.get("score"),
            )
        )
    return results


def _shape_value(s: Shape, width: int, height: int, index: int) -> dict[str, Any]:
    sx, sy = 100.0 / width, 100.0 / height
    if isinstance(s, Box):
        return {
            "x": s.x * sx,
            "y": s.y * sy,
            "width": s.w * sx,
            "height": s.h * sy,
            "rotation": s.rotation,
        }
    if isinstance(s, Polygon):
        return {"points": [[x * sx, y * sy] for x, y in s.points], "closed": True}
    if isinstance(s, Ellipse):
        return {
            "x": s.x * sx,
            "y": s.y * sy,
            "radiusX": s.rx * sx,
            "radiusY": s.ry * sy,
            "rotation": s.rotation,
        }
    if isinstance(s, Keypoint):
        return {"x": s.x * sx, "y": s.y * sy}
    if isinstance(s, Mask):
        if tuple(s.size) != (height, width):
            raise InputError(
                f"mask size {tuple(s.size)} does not match the image {(height, width)}",
                record=f"shape {index}",
            )
        return {"format": "rle", "rle": encode_brush(decode_mask(s.size, s.counts))}
    raise TypeError(f"unknown shape {type(s).__name__}")


def _result_id(s: Shape, index: int, used: set[str]) -> str:
    rid = s.attributes.get("ls_id")
    if not isinstance(rid, str) or not rid or rid in used:
        digest = hashlib.sha1(f"{index}:{s.model_dump_json()}".encode()).digest()
        rid = base64.urlsafe_b64encode(digest).decode()[:10]
        while rid in used:
            rid = base64.urlsafe_b64encode(hashlib.sha1(rid.encode()).digest()).decode()[:10]
    used.add(rid)
    return rid


def _result(
    rid: str,
    rtype: str,
    control: str,
    to_name: str,
    width: int,
    height: int,
    value: dict,
    score: object,
) -> dict:
    out: dict[str, Any] = {
        "id": rid,
        "type": rtype,
        "from_name": control,
        "to_name": to_name,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
    }
    if isinstance(score, int | float) and not isinstance(score, bool):
        out["score"] = float(score)
    return out
