"""LabelMe JSON: one JSON file per image, shapes in pixels of that image.

`imagePath` is relative to the JSON file; when the image is not on disk, the base64
`imageData` embedded by LabelMe is used instead. When both are there (LabelMe's default,
and its own tutorial file, whose imagePath names the JSON itself) the file is read if the
embedded copy shows the same picture, and the record is refused if it shows another.
Shape types: rectangle -> Box, polygon -> Polygon, circle (centre + a point on the rim)
-> Ellipse, point/points -> Keypoint, mask (a base64 PNG of the region between two
corner points, newer LabelMe) -> Mask.
line and linestrip have no area and no canonical shape: they are left out and counted in
the record's meta["ignored_shapes"], rather than becoming zero-area polygons that the
ingest would refuse.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from labelloop.domain import Box, Ellipse, Keypoint, Mask, Polygon, Shape
from labelloop.errors import InputError
from labelloop.geometry import mask_shape, shape_bbox, shape_mask
from labelloop.ingest.readers._imagefiles import (
    bool_mask,
    bytes_size,
    finite,
    first_inside,
    image_size,
    open_raster,
    outside_note,
    relative_ref,
    relative_uri,
    unclaimed_images,
    with_suffixes,
)
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    default_source,
    error_record,
    file_loader,
    image_record,
    note_left_out,
)
from labelloop.objects import WHOLE_OBJECT

IGNORED_TYPES = frozenset({"line", "linestrip"})
# Where a record's image came from when the JSON embeds it (`meta["image_path"]`).
EMBEDDED = "embedded imageData"


def _looks_like_labelme(head: bytes) -> bool:
    head = head.lstrip()
    return (
        head.startswith(b"{")
        and b'"shapes"' in head
        and (b'"shape_type"' in head or b'"imagePath"' in head or b'"imageData"' in head)
    )


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4096)
    except OSError:
        return b""


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json" and _looks_like_labelme(_head(path))
    if not path.is_dir():
        return False
    for i, p in enumerate(_json_files(path)):
        if _looks_like_labelme(_head(p)):
            return True
        if i >= 4:
            break
    return False


def read_labelme(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """One record per JSON file (sorted), read whole: a LabelMe file describes one image."""
    root = (path if path.is_dir() else path.parent).resolve()
    files = [path] if path.is_file() else sorted(_json_files(path))
    if not files:
        raise InputError("no LabelMe JSON files found", file=str(path))
    image_root = (opts.image_root or root).resolve()
    source = opts.source or default_source("labelme", root)
    claimed: set[Path] = set()
    keys: set[str] = set()
    for f in files:
        key = (f.relative_to(path) if path.is_dir() else Path(f.name)).with_suffix("").as_posix()
        keys.add(key)
        name = f"image {key}"
        try:
            rec = _record(
                root / f.relative_to(path) if path.is_dir() else root / f.name,
                key,
                name,
                root,
                image_root,
                source,
            )
        except InputError as exc:
            yield error_record(exc, source=source, external_id=key, file=str(f), name=name)
            continue
        if rec.meta.get("image_path", EMBEDDED) != EMBEDDED:
            claimed.add(Path(rec.meta["image_path"]).resolve())
        yield rec
    if path.is_dir():  # LabelMe saves no file for an image nobody drew on: unlabeled
        beside = [p for f in sorted({f.parent for f in files}) for p in f.iterdir()]
        for key, image in unclaimed_images(beside, path, claimed, keys):
            yield image_record(
                source=source,
                external_id=key,
                uri=relative_uri(image.resolve(), root),
                file=str(image),
                name=f"image {key}",
                image=image,
                annotations=[],
            )


def _json_files(folder: Path) -> Iterator[Path]:
    """The JSON files below `folder`, `.json` in any case (`b.JSON` too)."""
    return (p for p in folder.rglob("*") if p.suffix.lower() == ".json" and p.is_file())


def _load_json(path: Path, name: str) -> dict:
    file = str(path)
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"invalid JSON ({exc})", file=file, record=name) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", file=file, record=name) from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise InputError("not a LabelMe file (no 'shapes' list)", file=file, record=name)
    return data


def _image(
    data: dict, path: Path, root: Path, image_root: Path, name: str
) -> tuple[Callable[[], bytes], tuple[int, int], str, Path | str]:
    """(loader, (width, height), uri, where it came from) for the JSON's image: the file
    `imagePath` names (or one named like the JSON) when there is one, else the embedded
    `imageData`. With both, they must show the same picture (`_same_picture`)."""
    file = str(path)
    ref = data.get("imagePath")
    ref = relative_ref(ref) if isinstance(ref, str) else ""
    cands = []
    if ref:
        cands += [path.parent / ref, path.parent / Path(ref).name, image_root / Path(ref).name]
    cands += with_suffixes(path.parent, path.stem)
    # An imagePath naming a JSON (labelme's own tutorial file names itself) is no image.
    cands = [c for c in cands if c.suffix.lower() != ".json"]
    found = first_inside(cands, [root, image_root])
    embedded = data.get("imageData")
    if found is not None:
        size = image_size(found, file=file, record=name)
        if isinstance(embedded, str) and embedded:
            raw = _decode_embedded(embedded, file, name)
            _same_picture(found, size, raw, file, name)
        return file_loader(found, file=file, record=name), size, relative_uri(found, root), found
    if isinstance(embedded, str) and embedded:
        raw = _decode_embedded(embedded, file, name)
        size = bytes_size(raw, file=file, record=name)
        return (lambda: raw), size, ref or f"{path.stem}.embedded", EMBEDDED
    raise InputError(
        f"image {ref or path.stem!r} not found next to the JSON (imagePath is relative to it) "
        "and the file embeds no imageData; pass --image-root if images live elsewhere"
        + outside_note(cands, [root, image_root]),
        file=file,
        record=name,
    )


def _decode_embedded(embedded: str, file: str, name: str) -> bytes:
    try:
        return base64.b64decode("".join(embedded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"imageData is not base64 ({exc})", file=file, record=name) from None


# Mean absolute difference per channel (0-255) under which two decodings are one picture:
# LabelMe re-encodes the image it embeds (JPEG again, EXIF dropped), so the bytes differ.
SAME_PICTURE_LEVELS = 8.0


def _same_picture(found: Path, size: tuple[int, int], raw: bytes, file: str, name: str) -> None:
    """The file beside the JSON is read when the embedded copy shows the same picture; when
    they differ the shapes fit one of them and nothing says which, so it is refused."""
    if raw == found.read_bytes():
        return
    embedded_size = bytes_size(raw, file=file, record=name)
    fix = "; keep the one the shapes were drawn on (remove imageData, or the file)"
    if embedded_size != size:
        raise InputError(
            f"the image embedded in imageData is {embedded_size[0]}x{embedded_size[1]} but "
            f"{found.name} beside the JSON is {size[0]}x{size[1]}{fix}",
            file=file,
            record=name,
        )
    pictures = [
        np.asarray(open_raster(src, name=what, file=file, record=name).convert("RGB"), np.int16)
        for src, what in ((found, found.name), (raw, "imageData"))
    ]
    diff = float(np.abs(pictures[0] - pictures[1]).mean())
    if diff > SAME_PICTURE_LEVELS:
        raise InputError(
            f"{found.name} beside the JSON differs from the image embedded in imageData "
            f"(mean difference {diff:.0f} levels per pixel){fix}",
            file=file,
            record=name,
        )


def _record(
    path: Path, key: str, name: str, root: Path, image_root: Path, source: str
) -> SourceRecord:
    file = str(path)
    data = _load_json(path, name)
    load, (width, height), uri, origin = _image(data, path, root, image_root, name)
    declared = (data.get("imageWidth"), data.get("imageHeight"))
    if all(isinstance(v, int) and v > 0 for v in declared) and declared != (width, height):
        raise InputError(
            f"imageWidth/imageHeight say {declared[0]}x{declared[1]} but the image is "
            f"{width}x{height}; the shapes were drawn on another image",
            file=file,
            record=name,
        )
    shapes: list[Shape] = []
    ignored: Counter[str] = Counter()
    for i, raw in enumerate(data["shapes"], start=1):
        where = f"{name} / shape {i}"
        if not isinstance(raw, dict):
            raise InputError("shape is not an object", file=file, record=where)
        label = raw.get("label")
        if not isinstance(label, str) or not label.strip():
            raise InputError("shape has no label", file=file, record=where)
        where = f"{where} ({label.strip()})"
        kind = raw.get("shape_type") or "polygon"  # LabelMe before 3.x wrote no shape_type
        if not isinstance(kind, str):
            raise InputError(f"shape_type {kind!r} is not a name", file=file, record=where)
        if kind in IGNORED_TYPES:
            ignored[kind] += 1
            continue
        shapes.extend(_shapes(raw, label.strip(), kind, (width, height), file, where))
    notes: list[str] = []
    shapes = join_groups(shapes, width, height, file, name, notes)
    meta: dict = {}
    flags = data.get("flags")
    if isinstance(flags, dict) and (on := sorted(k for k, v in flags.items() if v is True)):
        meta["flags"] = on
    rec = image_record(
        source=source,
        external_id=key,
        uri=uri,
        file=file,
        name=name,
        image=origin,
        annotations=[RecordAnnotation(external_id="labelme", shapes=shapes)],
        meta=meta,
        load=load,
    )
    rec.warnings.extend(notes)
    return note_left_out(rec, ignored, "lines outline no region and count no cell")


def _points(raw: dict, file: str, where: str) -> list[tuple[float, float]]:
    pts = raw.get("points")
    if not isinstance(pts, list):
        raise InputError("shape has no 'points' list", file=file, record=where)
    out = []
    for p in pts:
        if not isinstance(p, list | tuple) or len(p) != 2:
            raise InputError(f"point {p!r} is not [x, y]", file=file, record=where)
        out.append(
            (finite(p[0], "x", file=file, record=where), finite(p[1], "y", file=file, record=where))
        )
    return out


def _attributes(raw: dict) -> dict[str, str | int | float | bool]:
    attrs: dict[str, str | int | float | bool] = {}
    gid = raw.get("group_id")
    if isinstance(gid, int) and not isinstance(gid, bool):
        attrs["group_id"] = gid
    desc = raw.get("description")
    if isinstance(desc, str) and desc.strip():
        attrs["description"] = desc.strip()
    flags = raw.get("flags")
    if isinstance(flags, dict):
        attrs.update({str(k): True for k, v in flags.items() if v is True})
    return attrs


def _shapes(
    raw: dict, label: str, kind: str, size: tuple[int, int], file: str, where: str
) -> list[Shape]:
    pts = _points(raw, file, where)
    attrs = _attributes(raw)
    need = {"rectangle": 2, "polygon": 3, "circle": 2, "point": 1, "points": 1, "mask": 2}
    if kind not in need:
        raise InputError(f"unsupported shape_type {kind!r}", file=file, record=where)
    if len(pts) < need[kind]:
        raise InputError(
            f"{kind} needs at least {need[kind]} points, has {len(pts)}", file=file, record=where
        )
    if kind == "rectangle":
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, y0 = min(xs), min(ys)
        return [Box(label=label, x=x0, y=y0, w=max(xs) - x0, h=max(ys) - y0, attributes=attrs)]
    if kind == "polygon":
        return [Polygon(label=label, points=pts, attributes=attrs)]
    if kind == "circle":
        (cx, cy), (ex, ey) = pts[0], pts[1]
        r = math.hypot(ex - cx, ey - cy)
        if r <= 0:
            raise InputError("circle has zero radius", file=file, record=where)
        return [Ellipse(label=label, x=cx, y=cy, rx=r, ry=r, attributes=attrs)]
    if kind in ("point", "points"):
        return [Keypoint(label=label, x=x, y=y, attributes=attrs) for x, y in pts]
    return [_mask(raw, label, pts, size, attrs, file, where)]


def join_groups(
    shapes: list[Shape], width: int, height: int, file: str, name: str, notes: list[str]
) -> list[Shape]:
    """One object drawn in pieces is one object: the polygons and masks of one label
    that share a `group_id` (LabelMe's way to draw a cell cut in two by another lying
    over it) become one mask, their union, marked `WHOLE_OBJECT` and counted once.
    Counted piece by piece, each would be another cell. Every piece's attributes are
    kept (`_piece_attributes`); pieces cut at the image's edge are said in `notes`, as the
    ingest says of any shape it clips, and a group with no pixel inside the image is
    refused."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, sh in enumerate(shapes):
        gid = sh.attributes.get("group_id")
        if isinstance(sh, Polygon | Mask) and isinstance(gid, int):
            groups.setdefault((sh.label, gid), []).append(i)
    joined: dict[int, Shape | None] = {}
    for (label, gid), members in groups.items():
        if len(members) < 2:
            continue
        where = f"{name} / group {gid} ({label})"
        union = np.zeros((height, width), dtype=bool)
        for i in members:
            union |= shape_mask(shapes[i], height, width)
            x0, y0, x1, y1 = shape_bbox(shapes[i]) or (0, 0, 0, 0)
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                notes.append(f"{file} ({where}): a piece was clipped to the image")
        if not union.any():
            raise InputError(
                f"the {len(members)} pieces of group {gid} have no area inside the image",
                file=file,
                record=where,
            )
        attrs = _piece_attributes([shapes[i] for i in members], f"{file} ({where})", notes)
        attrs.update({WHOLE_OBJECT: True, "pieces": len(members)})
        joined[members[0]] = mask_shape(union, label).model_copy(update={"attributes": attrs})
        joined.update(dict.fromkeys(members[1:]))
    out = (joined.get(i, sh) for i, sh in enumerate(shapes))  # None: joined into another
    return [sh for sh in out if sh is not None]


def _piece_attributes(
    pieces: list[Shape], where: str, notes: list[str]
) -> dict[str, str | int | float | bool]:
    """One object's attributes from its pieces': a flag or description set on any piece
    is the object's. Where pieces disagree (two descriptions) the first piece's value
    stands and `notes` names what was not kept, so no annotation is lost unsaid."""
    attrs: dict[str, str | int | float | bool] = {}
    dropped: list[str] = []
    for piece in pieces:
        for key, value in piece.attributes.items():
            if key not in attrs:
                attrs[key] = value
            elif attrs[key] != value:
                dropped.append(f"{key} {value!r}")
    if dropped:
        notes.append(
            f"{where}: the pieces disagree; kept the first piece's value, left out "
            + ", ".join(dropped)
        )
    return attrs


def _mask(
    raw: dict,
    label: str,
    pts: list[tuple[float, float]],
    size: tuple[int, int],
    attrs: dict[str, str | int | float | bool],
    file: str,
    where: str,
) -> Shape:
    """LabelMe stores the region between the two corner points (inclusive, truncated to
    int), so the PNG lands at (int(x1), int(y1)) of a full-image mask."""
    encoded = raw.get("mask")
    if not isinstance(encoded, str) or not encoded:
        raise InputError("mask shape has no 'mask' data", file=file, record=where)
    try:
        png = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"mask is not base64 ({exc})", file=file, record=where) from None
    region = bool_mask(open_raster(png, name="mask", file=file, record=where))
    width, height = size
    x0, y0 = int(min(p[0] for p in pts[:2])), int(min(p[1] for p in pts[:2]))
    h, w = region.shape[:2]
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise InputError(
            f"mask {w}x{h} at ({x0}, {y0}) does not fit the {width}x{height} image",
            file=file,
            record=where,
        )
    if not region.any():  # an erased mask: no cell, and a whole object must have one
        raise InputError("mask shape is empty (no object pixels)", file=file, record=where)
    full = np.zeros((height, width), dtype=bool)
    full[y0 : y0 + h, x0 : x0 + w] = region
    # One drawn mask is one object, in however many pieces its pixels lie.
    return mask_shape(full, label).model_copy(update={"attributes": {**attrs, WHOLE_OBJECT: True}})


FORMAT = Format(
    "labelme",
    read_labelme,
    detect,
    "LabelMe JSON (one per image): json; rectangles, polygons, circles, points, masks "
    "(base64 PNG via Pillow); embedded imageData when the image file is absent",
)
