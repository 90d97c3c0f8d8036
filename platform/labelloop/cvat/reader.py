"""'CVAT for images 1.1' XML exports (annotations.xml, alone or beside an images/ folder).

The file is streamed with iterparse and every <image> is cleared once converted, so a
project export with millions of shapes stays flat in memory. Regions (box, polygon, mask,
ellipse), points, skeleton points and tags become canonical shapes; polylines and cuboids
have no canonical counterpart and are counted in the record's meta instead of guessed at.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from labelloop.domain import Box, Ellipse, Keypoint, Mask, Polygon, Shape, Tag
from labelloop.errors import InputError
from labelloop.geometry import encode_mask
from labelloop.ingest.readers.image_lookup import ImageFinder
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    default_source,
    error_record,
    image_record,
    note_left_out,
)

IGNORED_KINDS = ("polyline", "cuboid")  # no region and no single point: nothing to train on
MAX_SIDE = 1 << 20
MAX_MASK_PIXELS = 1 << 28  # a full-image mask is materialised once while encoding
ANNOTATION_ID = "cvat"  # one annotation per image: CVAT keeps one shape set per frame

Attrs = dict[str, str | int | float | bool]


@dataclass
class _Meta:
    """What <meta> says about the export: who made it and how labels type their attributes."""

    kind: str | None = None  # project, task or job
    id: str | None = None
    task_subsets: dict[str, str] = field(default_factory=dict)
    attr_types: dict[tuple[str, str], str] = field(default_factory=dict)


def _xml_file(path: Path) -> Path | None:
    """The file given, else the folder's annotations.xml, else its one top-level XML that
    is a CVAT export (a task export renamed `train.xml`, as users keep them)."""
    if path.is_file():
        return path if path.suffix.lower() == ".xml" else None
    candidate = path / "annotations.xml"
    if candidate.is_file():
        return candidate
    found = [p for p in sorted(path.glob("*.xml")) if p.is_file() and _is_cvat_xml(p)]
    return found[0] if len(found) == 1 else None


def _is_cvat_xml(xml: Path) -> bool:
    try:
        with open(xml, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"<annotations" in head and any(t in head for t in (b"<version>", b"<meta>", b"<image "))


def detect(path: Path) -> bool:
    xml = _xml_file(path)
    return xml is not None and _is_cvat_xml(xml)


def read_cvat_xml(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """Yield one record per <image>; a bad image becomes that record's error."""
    xml = _xml_file(path)
    if xml is None:
        raise InputError("no annotations.xml (CVAT for images 1.1) here", file=str(path))
    file = str(xml)
    finder = ImageFinder(
        [opts.image_root] if opts.image_root else [xml.parent / "images", xml.parent]
    )
    meta = _Meta()
    source = opts.source
    depth, images, root = 0, 0, None
    for event, el in _events(xml):
        if event == "start":
            depth += 1
            if root is None:
                root = el
                if el.tag != "annotations":
                    raise InputError(
                        f"not a CVAT for images XML (root element <{el.tag}>)", file=file
                    )
            continue
        depth -= 1
        if depth != 1:
            continue
        if el.tag == "meta":
            meta = _parse_meta(el)
        elif el.tag == "track":
            raise InputError(
                "this is a 'CVAT for video' export (<track>); export the task as "
                "'CVAT for images 1.1'",
                file=file,
            )
        elif el.tag == "image":
            source = source or _source_name(meta, xml)
            rec = _record(el, images, meta, source, file, finder)
            images += 1
            yield rec
        root.clear()  # converted elements are dropped: memory stays flat
    if root is None:
        raise InputError("XML has no elements", file=file)


def _events(xml: Path) -> Iterator[tuple[str, Element]]:
    file = str(xml)
    try:
        yield from iterparse(file, events=("start", "end"))
    except (ParseError, LookupError, UnicodeError) as exc:  # LookupError: unknown encoding
        raise InputError(f"invalid or truncated XML ({exc})", file=file) from None
    except DefusedXmlException as exc:
        raise InputError(f"XML uses a forbidden construct ({exc})", file=file) from None
    except OSError as exc:
        raise InputError(f"cannot read XML ({exc.strerror or exc})", file=file) from None


def _parse_meta(el: Element) -> _Meta:
    meta = _Meta()
    node = next((el.find(k) for k in ("project", "task", "job") if el.find(k) is not None), None)
    if node is None:
        return meta
    meta.kind, meta.id = node.tag, (node.findtext("id") or "").strip() or None
    tasks = node.findall("tasks/task") if node.tag == "project" else [node]
    for task in tasks:
        tid, subset = (task.findtext("id") or "").strip(), (task.findtext("subset") or "").strip()
        if tid and subset:
            meta.task_subsets[tid] = subset
    for label in node.iterfind("labels/label"):
        lname = (label.findtext("name") or "").strip()
        for attr in label.iterfind("attributes/attribute"):
            aname = (attr.findtext("name") or "").strip()
            meta.attr_types[(lname, aname)] = (attr.findtext("input_type") or "").strip()
    return meta


def _source_name(meta: _Meta, xml: Path) -> str:
    if meta.kind and meta.id:
        return f"cvat:{meta.kind}-{meta.id}"
    return default_source("cvat", xml.parent.resolve())


def _record(
    el: Element, index: int, meta: _Meta, source: str, file: str, finder: ImageFinder
) -> SourceRecord:
    a = el.attrib
    image_id = (a.get("id") or "").strip() or f"#{index}"
    name = a.get("name", "")
    record = f"image {image_id} '{name}'"
    task_id = (a.get("task_id") or "").strip() or (meta.id if meta.kind == "task" else None)
    subset = (a.get("subset") or "").strip() or meta.task_subsets.get(task_id or "") or None
    scope = task_id or subset
    external_id = f"{scope}/{image_id}" if scope else image_id
    try:
        width, height = _side(a, "width", record, file), _side(a, "height", record, file)
        ignored: Counter[str] = Counter()
        shapes = _shapes(el, width, height, meta, record, file, ignored)
        image_path = finder.find(name, subset=subset, file=file, record=record)
    except InputError as exc:
        return error_record(
            exc, source=source, external_id=external_id, file=file, name=record, uri=name
        )
    info: dict = {"subset": subset, "cvat_task_id": task_id, "cvat_image_id": image_id}
    info = {k: v for k, v in info.items() if v is not None}
    rec = image_record(
        source=source,
        external_id=external_id,
        uri=name,
        file=file,
        name=record,
        image=image_path,
        annotations=[RecordAnnotation(external_id=ANNOTATION_ID, shapes=shapes)] if shapes else [],
        meta=info,
        declared_size=(width, height),
    )
    return note_left_out(rec, ignored, "no canonical shape for them")


def _shapes(
    el: Element,
    width: int,
    height: int,
    meta: _Meta,
    record: str,
    file: str,
    ignored: Counter[str],
) -> list[Shape]:
    shapes: list[Shape] = []
    seen: Counter[str] = Counter()
    for child in el:
        kind = child.tag
        seen[kind] += 1
        at = _At(width, height, f"{record} / {kind} {seen[kind]}", file)
        if kind in IGNORED_KINDS or (kind not in _CONVERTERS and kind != "skeleton"):
            ignored[kind] += 1
            continue
        label = child.get("label")
        if not label:
            raise at.error(f"<{kind}> has no label")
        attrs = {**_user_attributes(child, label, meta, at), **_flags(child, at)}
        if kind == "skeleton":
            attrs.update(skeleton=label, instance=seen[kind])
            shapes.extend(_skeleton(child, attrs, meta, at))
        else:
            shapes.extend(_CONVERTERS[kind](child, label, attrs, at))
    return shapes


@dataclass(frozen=True)
class _At:
    """Where a shape sits: its image's declared size and how errors name it."""

    width: int
    height: int
    where: str
    file: str

    def error(self, reason: str) -> InputError:
        return InputError(reason, file=self.file, record=self.where)


def _side(attrib: dict[str, str], key: str, record: str, file: str) -> int:
    at = _At(0, 0, record, file)
    value = _int(attrib.get(key), key, at)
    if not 0 < value <= MAX_SIDE:
        raise at.error(f"image {key} {value} is not a usable size")
    return value


def _int(raw: str | None, key: str, at: _At) -> int:
    try:
        return int((raw or "").strip())
    except ValueError:
        raise at.error(f"{key} {raw!r} is not an integer") from None


def _num(el: Element, key: str, at: _At, default: float | None = None) -> float:
    raw = el.get(key)
    if raw is None and default is not None:
        return default
    try:
        value = float((raw or "").strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise at.error(f"{key} {raw!r} is not a finite number")
    return value


def _points(el: Element, at: _At) -> list[tuple[float, float]]:
    raw = el.get("points") or ""
    out = []
    for pair in raw.split(";"):
        parts = pair.split(",")
        try:
            x, y = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            x = y = math.nan
        if not (math.isfinite(x) and math.isfinite(y)):
            raise at.error(f"bad points {raw[:80]!r}")
        out.append((x, y))
    return out


def _flags(el: Element, at: _At) -> Attrs:
    """CVAT's own per-shape fields, kept so a round trip back to CVAT loses nothing."""
    out: Attrs = {}
    if "occluded" in el.attrib:
        out["occluded"] = _truth(el.get("occluded", ""), "occluded", at)
    if "z_order" in el.attrib:
        out["z_order"] = _int(el.get("z_order"), "z_order", at)
    if el.get("group_id", "0").strip() not in ("", "0"):
        out["group_id"] = _int(el.get("group_id"), "group_id", at)
    if el.get("source"):
        out["source"] = el.get("source", "")
    return out


def _truth(text: str, what: str, at: _At) -> bool:
    """CVAT's booleans (1/0, true/false); anything else is refused, not read as false."""
    word = text.strip().lower()
    if word not in ("1", "0", "true", "false"):
        raise at.error(f"{what} {text!r} is not true/false or 1/0")
    return word in ("1", "true")


def _user_attributes(el: Element, label: str, meta: _Meta, at: _At) -> Attrs:
    """<attribute name=...>text</attribute>, typed by the label's declaration in <meta>;
    a value that its declared type cannot hold is refused, not changed."""
    out: Attrs = {}
    for attr in el.findall("attribute"):
        name, text = attr.get("name") or "", (attr.text or "").strip()
        if not name:
            raise at.error(f"an <attribute> has no name (its value {text[:40]!r})")
        kind = meta.attr_types.get((label, name), "")
        value: str | int | float | bool = text
        if kind == "checkbox":
            value = _truth(text, f"checkbox attribute {name!r}", at)
        elif kind == "number":
            try:
                number = float(text)
            except (ValueError, OverflowError):
                raise at.error(f"number attribute {name!r} is {text!r}") from None
            if not math.isfinite(number):
                raise at.error(f"number attribute {name!r} is {text!r}")
            value = int(number) if number.is_integer() else number
        out[name] = value
    return out


def _box(el: Element, label: str, attrs: Attrs, at: _At) -> list[Shape]:
    x0, y0, x1, y1 = (_num(el, k, at) for k in ("xtl", "ytl", "xbr", "ybr"))
    if x1 < x0 or y1 < y0:
        raise at.error(f"box corners are reversed (xtl {x0}, ytl {y0}, xbr {x1}, ybr {y1})")
    w, h = x1 - x0, y1 - y0
    rotation = _num(el, "rotation", at, default=0.0)
    if rotation:  # CVAT turns a box around its centre, the canonical box around its corner
        t = math.radians(rotation)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        x0 = cx - w / 2 * math.cos(t) + h / 2 * math.sin(t)
        y0 = cy - w / 2 * math.sin(t) - h / 2 * math.cos(t)
    return [Box(label=label, x=x0, y=y0, w=w, h=h, rotation=rotation, attributes=attrs)]


def _polygon(el: Element, label: str, attrs: Attrs, at: _At) -> list[Shape]:
    points = _points(el, at)
    if len(points) < 3:
        raise at.error(f"polygon has {len(points)} points")
    return [Polygon(label=label, points=points, attributes=attrs)]


def _keypoints(el: Element, label: str, attrs: Attrs, at: _At) -> list[Shape]:
    return [Keypoint(label=label, x=x, y=y, attributes=attrs) for x, y in _points(el, at)]


def _ellipse(el: Element, label: str, attrs: Attrs, at: _At) -> list[Shape]:
    cx, cy, rx, ry = (_num(el, k, at) for k in ("cx", "cy", "rx", "ry"))
    rotation = _num(el, "rotation", at, default=0.0)
    if rx <= 0 or ry <= 0:
        raise at.error(f"ellipse radii {rx}, {ry} are not positive")
    return [Ellipse(label=label, x=cx, y=cy, rx=rx, ry=ry, rotation=rotation, attributes=attrs)]


def _tag(el: Element, label: str, attrs: Attrs, at: _At) -> list[Shape]:
    return [Tag(label=label, attributes=attrs)]


def _skeleton(el: Element, attrs: Attrs, meta: _Meta, at: _At) -> list[Shape]:
    """Each visible element point becomes a Keypoint named by the element's label (the body
    part); the skeleton's label and its instance number stay in the attributes."""
    out: list[Shape] = []
    for n, node in enumerate(el.findall("points"), start=1):
        point_at = _At(at.width, at.height, f"{at.where} / point {n}", at.file)
        if _truth(node.get("outside", "0"), "outside", point_at):
            continue  # a part the annotator marked as not in the picture
        part = node.get("label")
        if not part:
            raise point_at.error("skeleton point has no label")
        own = {**attrs, **_user_attributes(node, part, meta, point_at), **_flags(node, point_at)}
        out += [Keypoint(label=part, x=x, y=y, attributes=own) for x, y in _points(node, point_at)]
    return out


def _mask(el: Element, label: str, attrs: Attrs, at: _At) -> list[Shape]:
    """CVAT's mask RLE runs row by row over its own box, starting with background."""
    left, top, w, h = (_int(el.get(k), k, at) for k in ("left", "top", "width", "height"))
    if left < 0 or top < 0 or w <= 0 or h <= 0 or left + w > at.width or top + h > at.height:
        raise at.error(
            f"mask box left {left}, top {top}, {w}x{h} does not fit the "
            f"{at.width}x{at.height} image"
        )
    if at.width * at.height > MAX_MASK_PIXELS:
        raise at.error(f"image {at.width}x{at.height} is too large for a mask")
    try:
        runs = [int(v) for v in (el.get("rle") or "").split(",")]
    except ValueError:
        raise at.error("mask rle is not a list of integers") from None
    if any(r < 0 for r in runs) or sum(runs) != w * h:
        raise at.error(f"mask rle covers {sum(runs)} pixels, its {w}x{h} box has {w * h}")
    local = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(h, w)
    if not local.any():
        raise at.error("mask has no foreground pixels")
    full = np.zeros((at.height, at.width), dtype=bool)
    full[top : top + h, left : left + w] = local
    mask_size, counts = encode_mask(full)
    return [Mask(label=label, size=mask_size, counts=counts, attributes=attrs)]


_CONVERTERS: dict[str, Callable[[Element, str, Attrs, _At], list[Shape]]] = {
    "box": _box,
    "polygon": _polygon,
    "points": _keypoints,
    "ellipse": _ellipse,
    "mask": _mask,
    "tag": _tag,
}


FORMAT = Format(
    "cvat",
    read_cvat_xml,
    detect,
    "CVAT for images 1.1 XML: streamed with defusedxml iterparse; mask RLE re-encoded "
    "with pycocotools",
)
