"""YOLO txt labels: the Ultralytics layout and CVAT's 'YOLO 1.1' export.

Ultralytics: images/<subset>/x.jpg with labels/<subset>/x.txt (or <subset>/images +
<subset>/labels, as Roboflow writes), class names in data.yaml (or classes.txt, as Label
Studio writes). CVAT 'YOLO 1.1': obj.names + obj.data, obj_<subset>_data/x.txt next to
x.jpg. A line is `class cx cy w h` (a box, normalised to 0..1) or `class x1 y1 x2 y2 ...`
(a segmentation polygon, normalised). Turning normalised numbers into pixels needs the
image size, which is read from the image header only (Pillow, no decode).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from labelloop.domain import Box, Polygon, Shape
from labelloop.errors import InputError
from labelloop.ingest.readers._imagefiles import (
    finite,
    first_inside,
    image_size,
    is_image,
    read_text,
    with_suffixes,
)
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

LABEL_DIRS = ("labels", "annotations")
YAML_FILES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
NAME_FILES = ("classes.txt", "obj.names")
_CVAT_DIR = re.compile(r"^obj_(.+)_data$")
_SUBSETS = {"valid": "val", "validation": "val"}
# Normalised coordinates a little outside 0..1 are drawing slop that core clips; more
# than this means the file holds pixel coordinates, which YOLO does not allow.
_SLACK = 0.01


def detect(path: Path) -> bool:
    if not path.is_dir():
        return False
    if any((path / n).is_file() for n in (*YAML_FILES, "obj.names", "obj.data")):
        return True
    if any(_CVAT_DIR.match(p.name) for p in path.iterdir() if p.is_dir()):
        return True
    return any(next(d.rglob("*.txt"), None) is not None for d in _label_dirs(path)) or any(
        detect(sub) for sub in split_folders(path)
    )


def _label_dirs(root: Path) -> list[Path]:
    """labels/ (any case), or Annotations/ holding .txt beside Images/ as some Ultralytics
    exports are laid out; also under train/ valid/ test/."""
    return [p for p in root.iterdir() if p.is_dir() and p.name.lower() in LABEL_DIRS]


def _names_from_yaml(path: Path) -> tuple[dict[int, str] | None, bool]:
    file = str(path)
    try:
        data = yaml.safe_load(read_text(path, file=file))
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML ({exc})", file=file) from None
    if not isinstance(data, dict):
        raise InputError("data.yaml is not a mapping", file=file)
    names = data.get("names")
    if names is None:
        return None, "kpt_shape" in data
    if isinstance(names, list):
        out = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict) and all(isinstance(k, int) for k in names):
        out = {int(k): str(v) for k, v in names.items()}
    else:
        raise InputError("'names' must be a list or a {index: name} mapping", file=file)
    return out, "kpt_shape" in data


def _names_from_txt(path: Path) -> dict[int, str]:
    lines = [ln.strip() for ln in read_text(path, file=str(path)).splitlines()]
    return dict(enumerate(ln for ln in lines if ln))


def class_names(root: Path) -> dict[int, str] | None:
    """Index -> class name from data.yaml, classes.txt or obj.names (first found); None
    when the folder names no classes (labels are then the class numbers)."""
    for n in YAML_FILES:
        if (root / n).is_file():
            names, pose = _names_from_yaml(root / n)
            if pose:
                raise InputError(
                    "pose (keypoint) datasets are not supported: lines carry keypoints after "
                    "the box",
                    file=str(root / n),
                )
            if names is not None:
                return names
    for n in NAME_FILES:
        if (root / n).is_file():
            return _names_from_txt(root / n)
    return None


def _is_label_file(parts: tuple[str, ...]) -> bool:
    """A .txt under labels/ or in a CVAT obj_<subset>_data/ folder (not classes.txt,
    train.txt or a README)."""
    return parts[-1].endswith(".txt") and (
        any(p.lower() in LABEL_DIRS for p in parts[:-1])
        or (len(parts) > 1 and bool(_CVAT_DIR.match(parts[-2])))
    )


def label_for(image: Path, root: Path) -> Path | None:
    """Ultralytics' rule (the last images/ folder becomes labels/, suffix .txt), then a
    .txt next to the image (CVAT, darknet)."""
    rel = image.relative_to(root).parts
    cands = []
    lowered = [p.lower() for p in rel[:-1]]
    if "images" in lowered:
        i = len(lowered) - 1 - lowered[::-1].index("images")
        parent = root.joinpath(*rel[:i])
        for d in _label_dirs(parent):
            cands.append(d.joinpath(*rel[i + 1 : -1], image.stem + ".txt"))
    cands.append(image.with_suffix(".txt"))
    return next((c for c in cands if c.is_file()), None)


def subset_of(rel: tuple[str, ...]) -> str | None:
    """images/<subset>/x.jpg, <subset>/images/x.jpg or obj_<subset>_data/x.jpg."""
    for i, part in enumerate(rel[:-1]):
        if m := _CVAT_DIR.match(part):
            return _SUBSETS.get(m.group(1), m.group(1))
        if part.lower() in ("images", *LABEL_DIRS):
            sub = rel[i + 1] if i + 1 < len(rel) - 1 else (rel[i - 1] if i > 0 else None)
            return _SUBSETS.get(sub, sub) if sub else None
    return None


def read_yolo(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """One record per image (unlabeled when it has no .txt: YOLO's background images have
    an empty .txt), then an error record per label file without an image."""
    if not path.is_dir():
        raise InputError(
            "a YOLO dataset is a folder (images/ + labels/ or obj_*_data/)", file=str(path)
        )
    root = path.resolve()
    source = opts.source or default_source("yolo", root)
    image_root = (opts.image_root or root).resolve()
    names = class_names(root)
    used: set[Path] = set()
    images = sorted(
        p
        for p in root.rglob("*")
        if is_image(p) and not any(d.lower() in LABEL_DIRS for d in p.relative_to(root).parts)
    )
    for image in images:
        rel = image.relative_to(root)
        key = rel.as_posix()
        name = f"image {key}"
        label = label_for(image, root)
        file = str(label or image)
        try:
            found = first_inside([image], [root, image_root])
            if found is None:
                raise InputError("image lies outside the dataset folder", file=str(image))
            if label is not None:
                used.add(label)
            yield _record(found, key, label, names, source, subset_of(rel.parts), name)
        except InputError as exc:
            yield error_record(exc, source=source, external_id=key, file=file, name=name)
    for label in sorted(root.rglob("*.txt")):
        if label in used or not _is_label_file(label.relative_to(root).parts):
            continue
        rel = label.relative_to(root)
        name = f"labels {rel.as_posix()}"
        image = first_inside(with_suffixes(image_root, label.stem), [image_root])
        if image is None:
            err = InputError(
                f"no image for this label file (looked next to it, in the matching images/ "
                f"folder and in {image_root})",
                file=str(label),
            )
            yield error_record(
                err, source=source, external_id=rel.as_posix(), file=str(label), name=name
            )
            continue
        key = image.relative_to(image_root).as_posix()
        try:
            yield _record(image, key, label, names, source, subset_of(rel.parts), f"image {key}")
        except InputError as exc:
            yield error_record(exc, source=source, external_id=key, file=str(label), name=name)


def _record(
    image: Path,
    key: str,
    label: Path | None,
    names: dict[int, str] | None,
    source: str,
    subset: str | None,
    name: str,
) -> SourceRecord:
    file = str(label or image)
    anns = []
    if label is not None:
        size = image_size(image, file=file, record=name)
        shapes = list(parse_label_file(label, size, names, name))
        anns.append(RecordAnnotation(external_id="yolo", shapes=shapes))
    return image_record(
        source=source,
        external_id=key,
        uri=key,
        file=file,
        name=name,
        image=image,
        annotations=anns,
        meta={"subset": subset, **split_meta(subset)} if subset else None,
    )


def parse_label_file(
    path: Path, size: tuple[int, int], names: dict[int, str] | None, name: str
) -> Iterator[Shape]:
    """Shapes in pixels of an image `size` = (width, height); read line by line."""
    file = str(path)
    width, height = size
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                parts = line.split()
                if parts:
                    yield _line_shape(parts, width, height, names, file, f"{name} / line {number}")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", file=file, record=name) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", file=file, record=name) from None


_NOT_NORMALISED = "coordinates must be normalised to 0..1 (pixel coordinates are not YOLO)"
_POSE_LINE = (
    "this looks like a YOLO pose line (a box, then x y visibility per keypoint, visibility "
    "2 = visible): pose (keypoint) datasets are not supported"
)


def _normalised(v: float) -> bool:
    """Within 0..1, with the slack rounding in exporters leaves."""
    return -_SLACK <= v <= 1 + _SLACK


def _looks_like_pose(nums: list[float]) -> bool:
    """A box followed by (x, y, visibility) triples whose visibilities are 0, 1 or 2, one
    of them 2: the only values out of 0..1 are what a pose line puts there."""
    if len(nums) < 7 or (len(nums) - 4) % 3:
        return False
    vis = nums[6::3]
    coords = [v for i, v in enumerate(nums) if i < 4 or (i - 4) % 3 != 2]
    return all(v in (0, 1, 2) for v in vis) and 2 in vis and all(map(_normalised, coords))


def _line_shape(
    parts: list[str], width: int, height: int, names: dict[int, str] | None, file: str, where: str
) -> Shape:
    cls = finite(parts[0], "class", file=file, record=where)
    if cls < 0 or cls != int(cls):
        raise InputError(f"class {parts[0]!r} is not a class index", file=file, record=where)
    index = int(cls)
    if names is None:
        label = str(index)
    elif index in names:
        label = names[index]
    else:
        raise InputError(
            f"class {index} is not among the {len(names)} class names", file=file, record=where
        )
    nums = [finite(p, "coordinate", file=file, record=where) for p in parts[1:]]
    if len(nums) == 4 and (nums[2] <= 0 or nums[3] <= 0):
        what = "negative" if min(nums[2], nums[3]) < 0 else "zero"
        raise InputError(
            f"box has {what} size (w {nums[2]:g}, h {nums[3]:g})",
            file=file,
            record=where,
        )
    if not all(map(_normalised, nums)):
        raise InputError(
            _POSE_LINE if _looks_like_pose(nums) else _NOT_NORMALISED, file=file, record=where
        )
    if len(nums) == 4:
        cx, cy, w, h = nums
        if w <= 0 or h <= 0:
            raise InputError(f"box has zero size (w {w:g}, h {h:g})", file=file, record=where)
        return Box(
            label=label, x=(cx - w / 2) * width, y=(cy - h / 2) * height, w=w * width, h=h * height
        )
    if len(nums) >= 6 and len(nums) % 2 == 0:
        pts = [(x * width, y * height) for x, y in zip(nums[0::2], nums[1::2], strict=True)]
        return Polygon(label=label, points=pts)
    raise InputError(
        f"{len(parts)} values; expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...'",
        file=file,
        record=where,
    )


FORMAT = Format(
    "yolo",
    read_yolo,
    detect,
    "YOLO txt (Ultralytics images/ + labels/ + data.yaml or classes.txt; CVAT 'YOLO 1.1' "
    "obj.names + obj_*_data/): boxes and segmentation polygons; image size from the Pillow "
    "header; PyYAML for data.yaml",
)
