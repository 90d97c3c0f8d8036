"""Segmentation masks stored as image files: a folder of images plus a folder of masks.

Two layouts are read. CVAT's 'Segmentation mask 1.1' export (SegmentationClass/ colour
PNGs, optional SegmentationObject/ instance PNGs, labelmap.txt 'name:r,g,b::',
ImageSets/Segmentation/<subset>.txt) and a plain images/ + masks/ pair (same stems) whose
pixel values or colours are named by labelmap.txt or labels.json. Every instance becomes
one Mask shape: from SegmentationObject when present, otherwise one per connected component
of each class (scipy.ndimage.label, 4-connectivity), because detection counts and instance
metrics need instances, not class regions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from labelloop.domain import Mask
from labelloop.errors import InputError
from labelloop.geometry import mask_shape
from labelloop.ingest.readers._imagefiles import (
    first_inside,
    image_size,
    is_image,
    open_raster,
    read_text,
    relative_uri,
    with_suffixes,
)
from labelloop.ingest.readers._labelmap import (
    LABEL_MAP_FILES,
    LabelMap,
    class_codes,
    load_label_map,
    object_ids,
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

IMAGE_DIRS = ("images", "image", "imgs", "JPEGImages", "JpegImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "SegmentationClass")


def instance_masks(
    codes: np.ndarray,
    names: dict[int, str],
    objects: np.ndarray | None = None,
    *,
    file: str = "",
    record: str = "",
) -> list[Mask]:
    """One Mask per instance: SegmentationObject ids when given (each instance takes the
    majority class under it), else the connected components of each class."""
    from scipy import ndimage  # imported here: every ingest loads this reader, few use it

    out: list[Mask] = []
    full = np.zeros(codes.shape, dtype=bool)
    if objects is None:
        for code in sorted(names):
            comp, _ = ndimage.label(codes == code)
            for index, sl in enumerate(ndimage.find_objects(comp), start=1):
                if sl is None:
                    continue
                full[sl] = comp[sl] == index
                out.append(mask_shape(full, names[code]))
                full[sl] = False
        return out
    for obj in np.unique(objects).tolist():
        if obj == 0:
            continue
        pixels = objects == obj
        votes = np.bincount(codes[pixels], minlength=1)
        votes[0] = 0
        if not votes.any():
            raise InputError(
                f"instance {obj} in SegmentationObject has no class in SegmentationClass",
                file=file,
                record=record,
            )
        out.append(mask_shape(pixels, names[int(votes.argmax())]))
    return out


def mask_file_shapes(
    class_path: Path,
    object_path: Path | None,
    labels: LabelMap | None,
    size: tuple[int, int],
    *,
    record: str,
) -> list[Mask]:
    """Instance Mask shapes from one class mask (and its object mask); a mask drawn for
    another image size is the record's error."""
    file = str(class_path)
    im = open_raster(class_path, name=f"mask {class_path.name}", file=file, record=record)
    _check_size(im, class_path, size, record)
    codes, names = class_codes(im, labels, name=f"mask {class_path.name}", file=file, record=record)
    objects = None
    if object_path is not None:
        obj_im = open_raster(
            object_path, name=f"mask {object_path.name}", file=str(object_path), record=record
        )
        _check_size(obj_im, object_path, size, record)
        objects = object_ids(obj_im)
    return instance_masks(codes, names, objects, file=file, record=record)


def _check_size(im: Image.Image, path: Path, size: tuple[int, int], record: str) -> None:
    if im.size != size:
        raise InputError(
            f"mask {path.name} is {im.size[0]}x{im.size[1]} but its image is {size[0]}x{size[1]}",
            file=str(path),
            record=record,
        )


@dataclass
class MaskLayout:
    """Where a mask dataset keeps its images, class masks and instance masks."""

    root: Path
    classes: Path
    images: Path | None = None
    objects: Path | None = None
    labels: LabelMap | None = None
    subsets: dict[str, str] = field(default_factory=dict)

    @cached_property
    def _listing(self) -> list[Path]:
        """Every file below the mask folder, sorted: listed once for the masks read and
        for the files refused beside them (a folder of 100,000 masks is slow to walk)."""
        return _files(self.classes)

    def mask_files(self) -> dict[str, Path]:
        return _by_key(self.classes, self._listing)

    def unread_records(self, read: dict[str, Path], source: str) -> Iterator[SourceRecord]:
        """An error record per file of the mask folder that is no image type read and
        stands for no mask that is (`read`): a mask saved as GIF would leave its image
        unlabeled without a word. Arrays beside PNGs of the same name (labelme2voc writes
        `.npy`) are twins, and the label map kept beside the masks is read."""
        for stray in self._listing:
            rel = stray.relative_to(self.classes)
            if (
                is_image(stray)
                or stray.name[:1] == "."
                or stray.name in LABEL_MAP_FILES
                or rel.with_suffix("").as_posix() in read
            ):
                continue
            why = f"{stray.name} in the mask folder is not an image type read (save it as PNG)"
            yield error_record(
                why,
                source=source,
                external_id=rel.as_posix(),
                file=str(stray),
                name=f"mask {rel.as_posix()}",
            )

    def object_file(self, key: str) -> Path | None:
        if self.objects is None:
            return None
        return first_inside(with_suffixes(self.objects, key), [self.objects])


def _files(folder: Path) -> list[Path]:
    """Every file below `folder`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _by_key(folder: Path, files: list[Path] | None = None) -> dict[str, Path]:
    """Image files below `folder` (or among `files`, its files as `_files` lists them)
    keyed by relative path without suffix ('sub/img_1')."""
    out: dict[str, Path] = {}
    for p in _files(folder) if files is None else files:
        if is_image(p):
            out.setdefault(p.relative_to(folder).with_suffix("").as_posix(), p)
    return out


def image_set_subsets(root: Path, kind: str) -> dict[str, str]:
    """ImageSets/<kind>/<subset>.txt -> {image id: subset}; 'trainval' only fills gaps, and
    per-class lists ('cat_train.txt': 'id  1') are not subsets."""
    folder = root / "ImageSets" / kind
    if not folder.is_dir():
        return {}
    out: dict[str, str] = {}
    files = sorted(folder.glob("*.txt"), key=lambda p: (p.stem in ("trainval", "all"), p.stem))
    for path in files:
        ids = [ln.split() for ln in read_text(path, file=str(path)).splitlines() if ln.strip()]
        if any(len(parts) != 1 for parts in ids):
            continue
        subset = {"valid": "val", "validation": "val"}.get(path.stem, path.stem)
        for (image_id,) in ids:
            out.setdefault(image_id, subset)
    return out


def jpeg_dir(root: Path) -> Path | None:
    """VOC's JPEGImages/ (CVAT's documentation spells it JpegImages/)."""
    return next((root / d for d in ("JPEGImages", "JpegImages") if (root / d).is_dir()), None)


def segmentation_dirs(path: Path) -> tuple[Path, Path | None] | None:
    """VOC's (SegmentationClass, SegmentationObject); labelme2voc.py writes the masks as
    PNG into SegmentationClassPNG/ (its SegmentationClass/ holds .npy arrays)."""
    for suffix in ("PNG", ""):
        seg = path / f"SegmentationClass{suffix}"
        if seg.is_dir() and (suffix or not _only_arrays(seg)):
            obj = path / f"SegmentationObject{suffix}"
            return seg, obj if obj.is_dir() else None
    return None


def _only_arrays(folder: Path) -> bool:
    return next(folder.glob("*.npy"), None) is not None and not any(
        is_image(p) for p in folder.iterdir()
    )


def find_layout(path: Path) -> MaskLayout | None:
    if not path.is_dir():
        return None
    dirs = segmentation_dirs(path)
    if dirs is not None:
        seg, objects = dirs
        images = jpeg_dir(path)
        return MaskLayout(
            root=path,
            classes=seg,
            images=images,
            objects=objects,
            labels=load_label_map(path) or LabelMap.voc_default(),
            subsets=image_set_subsets(path, "Segmentation"),
        )
    images = next((path / d for d in IMAGE_DIRS if (path / d).is_dir()), None)
    for d in MASK_DIRS:
        masks = path / d
        if masks.is_dir() and _first_is_image(masks):
            return MaskLayout(
                root=path, classes=masks, images=images, labels=load_label_map(path, masks)
            )
    return None


def _first_is_image(folder: Path, look: int = 20) -> bool:
    """Mask images, not YOLO label text files, among the first few files of `folder`."""
    seen = []
    for p in folder.rglob("*"):
        if p.is_file():
            seen.append(p)
            if len(seen) >= look:
                break
    return any(is_image(p) for p in seen) and not any(p.suffix.lower() == ".txt" for p in seen)


def detect(path: Path) -> bool:
    if not path.is_dir() or (path / "Annotations").is_dir():
        return False
    if segmentation_dirs(path) is not None:
        return True
    has_images = any((path / d).is_dir() for d in IMAGE_DIRS)
    return has_images and any((path / d).is_dir() and _first_is_image(path / d) for d in MASK_DIRS)


def read_mask_folder(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """One record per image (or per mask when images live under --image-root); images
    without a mask are unlabeled, masks without an image are errors."""
    layout = find_layout(path)
    if layout is None:
        raise InputError(
            "not a mask dataset: expected SegmentationClass/ or images/ + masks/", file=str(path)
        )
    root = layout.root.resolve()
    source = opts.source or default_source("masks", root)
    image_root = (opts.image_root or layout.images or layout.root).resolve()
    masks = layout.mask_files()
    images = _by_key(layout.images) if layout.images is not None else {}
    for key in sorted(set(masks) | set(images)):
        name = f"image {key}"
        mask = masks.get(key)
        file = str(mask or images[key])
        try:
            yield _record(layout, key, images.get(key), mask, image_root, source, name)
        except InputError as exc:
            yield error_record(exc, source=source, external_id=key, file=file, name=name)
    yield from layout.unread_records(masks, source)


def _record(
    layout: MaskLayout,
    key: str,
    image: Path | None,
    mask: Path | None,
    image_root: Path,
    source: str,
    name: str,
) -> SourceRecord:
    roots = [layout.root, image_root]
    image = first_inside([image] if image else with_suffixes(image_root, key), roots)
    if image is None:
        assert mask is not None
        raise InputError(
            f"no image for mask {mask.name} (looked for {key}.<png|jpg|tif|...> in {image_root})",
            file=str(mask),
            record=name,
        )
    anns = []
    if mask is not None:
        size = image_size(image, file=str(image), record=name)
        shapes = mask_file_shapes(mask, layout.object_file(key), layout.labels, size, record=name)
        anns.append(RecordAnnotation(external_id="mask", shapes=list(shapes)))
    return image_record(
        source=source,
        external_id=key,
        uri=relative_uri(image, image_root),
        file=str(mask or image),
        name=name,
        image=image,
        annotations=anns,
        meta={"subset": layout.subsets[key]} if key in layout.subsets else None,
    )


FORMAT = Format(
    "masks",
    read_mask_folder,
    detect,
    "images + mask PNGs (CVAT 'Segmentation mask 1.1' or images/ + masks/ with labelmap.txt / "
    "labels.json): Pillow reads masks, scipy.ndimage splits instances, pycocotools RLE",
)
