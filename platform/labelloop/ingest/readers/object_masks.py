"""Per-object mask folders: one binary PNG per cell or nucleus, read as one instance each.

Two layouts are read. The 2018 Data Science Bowl's: one folder per image,
`<id>/images/<id>.png` beside `<id>/masks/*.png`; and a flat `images/<stem>.png` beside
`masks/<stem>_<k>.png`. Every non-zero pixel of a mask file is its object, so touching and
even overlapping cells stay separate objects (overlaps are reported as warnings and both
kept: the counts and instance metrics read each file as one cell). The files carry no
class, so every object is labelled `object`; name the project's class with
`--label-map object=<label>`.

A mask of another size than its image, an empty mask, or masks without their image are
the record's error, naming the mask file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from labelloop.domain import Mask
from labelloop.errors import InputError
from labelloop.geometry import mask_shape
from labelloop.ingest.readers._imagefiles import (
    bool_mask,
    file_refusal,
    image_size,
    is_image,
    open_raster,
    relative_uri,
    visible,
)
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    default_source,
    error_record,
    image_record,
)
from labelloop.objects import WHOLE_OBJECT

OBJECT_LABEL = "object"
_NUMBERED = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)$")
_LOOK = 20  # folders / files inspected by `detect`


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))


def _is_dsb_sample(folder: Path) -> bool:
    return folder.is_dir() and (folder / "masks").is_dir() and (folder / "images").is_dir()


def _is_one_sample(path: Path) -> bool:
    """`path` itself is one `<id>/` folder: its images/ holds `<id>.<ext>`."""
    return _is_dsb_sample(path) and any(p.stem == path.name for p in _images_in(path / "images"))


def _dsb_samples(path: Path) -> list[Path]:
    """`<id>/` folders (path itself when it is one): every visible subfolder, since one
    holding neither images/ nor masks/ must be reported, not passed over."""
    if _is_one_sample(path):
        return [path]
    return [c for c in visible(path) if c.is_dir()]


def _flat_groups(path: Path) -> tuple[dict[str, Path], dict[str, list[Path]]] | None:
    """Images by stem and their numbered masks (`masks/<stem>_<k>.png`), or None when the
    masks folder is not laid out that way (then it is a class-mask folder)."""
    images_dir, masks_dir = path / "images", path / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        return None
    images = {p.stem: p for p in _images_in(images_dir)}
    masks: dict[str, list[Path]] = {}
    for p in _images_in(masks_dir):
        m = _NUMBERED.match(p.stem)
        if p.stem in images or m is None:
            return None  # a mask named like its image: one class mask per image
        masks.setdefault(m["stem"], []).append(p)
    if not masks:
        return None
    for files in masks.values():
        files.sort(key=lambda p: int(_NUMBERED.match(p.stem)["k"]))  # type: ignore[index]
    return images, masks


def detect(path: Path) -> bool:
    if not path.is_dir():
        return False
    if _flat_groups(path) is not None or _is_one_sample(path):
        return True
    children = [c for _, c in zip(range(_LOOK), sorted(path.iterdir()), strict=False)]
    return any(_is_dsb_sample(c) for c in children)


def object_mask_shapes(
    masks: list[Path], size: tuple[int, int], *, record: str
) -> tuple[list[Mask], list[str]]:
    """One Mask per file, and a warning per pair of files that overlap (both are kept)."""
    shapes: list[Mask] = []
    warnings: list[str] = []
    owner = np.zeros((size[1], size[0]), np.int32)  # 1-based index of the first file
    for i, path in enumerate(masks, start=1):
        file = str(path)
        im = open_raster(path, name=f"mask {path.name}", file=file, record=record)
        if im.size != size:
            raise InputError(
                f"mask {path.name} is {im.size[0]}x{im.size[1]} but its image is "
                f"{size[0]}x{size[1]}",
                file=file,
                record=record,
            )
        m = bool_mask(im)
        if not m.any():
            raise InputError(
                f"mask {path.name} is empty (no object pixels)", file=file, record=record
            )
        under = owner[m]
        for other, n in zip(*np.unique(under[under > 0], return_counts=True), strict=True):
            warnings.append(
                f"{file} ({record}): overlaps mask {masks[int(other) - 1].name} by {int(n)} px; "
                "both kept"
            )
        owner[m & (owner == 0)] = i
        shape = mask_shape(m, OBJECT_LABEL)  # one cell, even when drawn in fragments
        shapes.append(shape.model_copy(update={"attributes": {WHOLE_OBJECT: True}}))
    return shapes, warnings


def _record(
    source: str,
    key: str,
    image: Path | None,
    masks: list[Path],
    root: Path,
) -> SourceRecord:
    name = f"image {key}"
    if image is None:
        listed = ", ".join(p.name for p in masks[:3]) + (" ..." if len(masks) > 3 else "")
        raise InputError(
            f"{len(masks)} mask(s) without their image ({listed}); expected the image "
            f"{key}.<png|jpg|tif|...>",
            file=str(masks[0].parent),
            record=name,
        )
    anns: list[RecordAnnotation] = []
    warnings: list[str] = []
    if masks:
        size = image_size(image, file=str(image), record=name)
        shapes, warnings = object_mask_shapes(masks, size, record=name)
        anns.append(RecordAnnotation(external_id="masks", shapes=list(shapes)))
    rec = image_record(
        source=source,
        external_id=key,
        uri=relative_uri(image, root),
        file=str(image),
        name=name,
        image=image,
        annotations=anns,
    )
    rec.warnings.extend(warnings)
    return rec


def _sample(folder: Path, root: Path) -> tuple[Path | None, list[Path]]:
    """The image and mask files of one `<id>/` folder. Everything in images/ and masks/
    is accounted for: a second image, a file that is not an image, a link out of the
    dataset or to nowhere, or a folder without images/ is the record's error."""
    record = f"image {folder.name}"
    parts = {name: folder / name for name in ("images", "masks")}
    if not parts["images"].is_dir():
        what = "masks/ but no images/" if parts["masks"].is_dir() else "no images/ or masks/"
        raise InputError(
            f"{folder.name}/ holds {what} (expected images/{folder.name}.png)",
            file=str(folder),
            record=record,
        )
    files: dict[str, list[Path]] = {}
    for name, sub in parts.items():
        files[name] = visible(sub) if sub.is_dir() else []
        for f in files[name]:
            if why := file_refusal(f, root, f"{folder.name}/{name}/"):
                raise InputError(why, file=str(f), record=record)
    found = files["images"]
    if len(found) > 1:
        listed = ", ".join(p.name for p in found[:4])
        raise InputError(
            f"{folder.name}/images/ holds {len(found)} images ({listed}); expected one",
            file=str(found[1]),
            record=record,
        )
    return (found[0] if found else None), files["masks"]


def _refuse(why: str, f: Path) -> tuple[Path | None, list[Path]]:
    raise InputError(why, file=str(f), record=f"file {f.parent.name}/{f.name}")


def _entries(path: Path) -> Iterator[tuple[str, Callable[[], tuple[Path | None, list[Path]]]]]:
    """Per image of either layout, its key and how to list its image (or None) and mask
    files; the listing raises InputError for a folder that cannot be one image."""
    flat = _flat_groups(path)
    if flat is not None:
        images, masks = flat
        for key in sorted(set(images) | set(masks)):
            yield key, lambda key=key: (images.get(key), masks.get(key, []))
        # Everything else in images/ and masks/ is said, as in the other layout: a mask
        # saved as GIF, or in a subfolder, would otherwise be a cell not counted.
        for sub in ("images", "masks"):
            for f in visible(path / sub):
                if why := file_refusal(f, path, f"{sub}/"):
                    yield f"{sub}/{f.name}", lambda why=why, f=f: _refuse(why, f)
        return
    for folder in _dsb_samples(path):
        yield folder.name, lambda folder=folder: _sample(folder, path)


def read_object_masks(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """One record per image; a broken mask or a mask without its image is that record's
    error (see the module docstring)."""
    if not detect(path):
        raise InputError(
            "not a per-object mask folder: expected <id>/images/ + <id>/masks/ or "
            "images/ + masks/<stem>_<k>.png",
            file=str(path),
        )
    root = path.resolve()
    source = opts.source or default_source("object-masks", root)
    for key, listing in _entries(root):
        image, masks = None, []
        try:
            image, masks = listing()
            yield _record(source, key, image, masks, root)
        except InputError as exc:
            file = str(masks[0] if masks else image or root / key)
            yield error_record(exc, source=source, external_id=key, file=file, name=f"image {key}")


FORMAT = Format(
    "object-masks",
    read_object_masks,
    detect,
    "one binary PNG per object: <id>/images/<id>.png + <id>/masks/*.png (2018 Data Science "
    "Bowl) or images/<stem>.png + masks/<stem>_<k>.png; Pillow reads masks, pycocotools RLE",
)
