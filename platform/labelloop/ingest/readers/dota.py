"""YOLO-OBB in DOTA's labelTxt layout: rotated boxes as four corner points in pixels.

Roboflow's 'YOLOv5 Oriented Bounding Boxes' export and the DOTA dataset keep images/x.png
with labelTxt/x.txt (also under train/ valid/ test/). A line is `x1 y1 x2 y2 x3 y3 x4 y4
class difficult`, after optional `imagesource:` / `gsd:` header lines. Each object
becomes a Polygon of its four corners: the canonical form of a rotated box, which keeps
the angle for segmentation and bounds it for detection. (Ultralytics' own OBB txt,
`class x1 y1 ... x4 y4` normalised under labels/, is read by the YOLO reader.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from labelloop.domain import Polygon
from labelloop.errors import InputError
from labelloop.ingest.readers._imagefiles import finite, first_inside, is_image, with_suffixes
from labelloop.ingest.readers.splits import split_folders, split_meta
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    default_source,
    error_record,
    image_record,
)

LABEL_DIR = "labelTxt"


def _bases(root: Path) -> list[Path]:
    """Folders holding a labelTxt/: the root and its subset folders."""
    return [b for b in [root, *split_folders(root)] if (b / LABEL_DIR).is_dir()]


def detect(path: Path) -> bool:
    return path.is_dir() and bool(_bases(path))


def _image_dir(base: Path) -> Path:
    return next((p for p in base.iterdir() if p.is_dir() and p.name.lower() == "images"), base)


def read_dota(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """One record per label file, then one (unlabeled) per image no label file claims."""
    bases = _bases(path) if path.is_dir() else []
    if not bases:
        raise InputError(f"no {LABEL_DIR}/ folder (YOLO-OBB / DOTA layout)", file=str(path))
    root = path.resolve()
    source = opts.source or default_source("obb", root)
    for base in bases:
        images = _image_dir(base)
        meta = split_meta(base.name) if base != path else {}
        used: set[Path] = set()
        for label in sorted((base / LABEL_DIR).rglob("*.txt")):
            rel = label.relative_to(base / LABEL_DIR).with_suffix("")
            folder = images / rel.parent
            image = first_inside(with_suffixes(folder, rel.name), [root])
            key = (base.relative_to(path) / rel).as_posix()
            name = f"image {key}"
            if image is None:
                err = InputError(f"no image {rel.name}.<png|jpg|...> in {folder}", file=str(label))
                yield error_record(err, source=source, external_id=key, file=str(label), name=name)
                continue
            used.add(image)
            try:
                shapes = list(_shapes(label, name))
            except InputError as exc:
                yield error_record(exc, source=source, external_id=key, file=str(label), name=name)
                continue
            yield image_record(
                source=source,
                external_id=key,
                uri=image.relative_to(root).as_posix(),
                file=str(label),
                name=name,
                image=image,
                annotations=[RecordAnnotation(external_id="obb", shapes=shapes)],
                meta=dict(meta),
            )
        for image in sorted(p for p in images.rglob("*") if is_image(p)):
            real = first_inside([image], [root])
            if real is None or real in used:
                continue
            rel = image.relative_to(images).with_suffix("")
            key = (base.relative_to(path) / rel).as_posix()
            yield image_record(
                source=source,
                external_id=key,
                uri=real.relative_to(root).as_posix(),
                file=str(image),
                name=f"image {key}",
                image=real,
                annotations=[],
                meta=dict(meta),
            )


def _shapes(label: Path, name: str) -> Iterator[Polygon]:
    file = str(label)
    try:
        lines = label.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", file=file, record=name) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", file=file, record=name) from None
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or (len(parts) == 1 and ":" in parts[0]):  # imagesource:, gsd:
            continue
        where = f"{name} / line {number}"
        if len(parts) not in (9, 10):
            raise InputError(
                f"{len(parts)} values; expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]'",
                file=file,
                record=where,
            )
        nums = [finite(v, "coordinate", file=file, record=where) for v in parts[:8]]
        attrs: dict[str, str | int | float | bool] = {}
        if len(parts) == 10 and parts[9] not in ("0", "1"):  # never read as not difficult
            raise InputError(f"difficult {parts[9]!r} is not 0 or 1", file=file, record=where)
        if len(parts) == 10 and parts[9] == "1":
            attrs["difficult"] = True
        pts = list(zip(nums[0::2], nums[1::2], strict=True))
        yield Polygon(label=parts[8], points=pts, attributes=attrs)


FORMAT = Format(
    "yolo-obb",
    read_dota,
    detect,
    "YOLO-OBB / DOTA labelTxt/ (Roboflow 'YOLOv5 Oriented Bounding Boxes'): rotated boxes "
    "as 4-corner polygons in pixels, difficult flag, train/ valid/ test/ pinned",
)
