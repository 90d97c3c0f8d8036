"""Images beside their masks: which sibling folders pair an image with its label image.

A dataset that keeps masks in `masks/` or `label/` beside `images/` or `image/`, file for
file, is neither class folders nor an image pool; read as either, the masks would be
taken for images and every label lost unseen (`sniff.refuse_mask_layout`)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from labelloop.ingest.readers.images import IMAGE_SUFFIXES

MASK_SUFFIXES = IMAGE_SUFFIXES | {".gif"}
# A label image holds a few values (classes, or instance ids); a photo thousands.
MASK_COLOURS = 1024
# Folder names under which datasets keep masks or label images beside their images.
MASK_FOLDER_NAMES = {
    "mask",
    "masks",
    "label",
    "labels",
    "annotation",
    "annotations",
    "gt",
    "groundtruth",
    "ground_truth",
    "ground-truth",
    "seg",
    "segmentation",
    "segmentations",
    "segmentationclass",
    "segmentationobject",
}


def mask_folders(folder: Path, depth: int = 2) -> list[tuple[Path, Path]]:
    """(images, masks) sibling folders at most `depth` levels below `folder`: a folder
    named like masks (`MASK_FOLDER_NAMES`) whose image files share their names (less the
    suffix) with a sibling's, at least half of them, and whose first such file is a mask
    of its twin: the same size, a few values. Read as class folders or as an image pool,
    the masks would be taken for images and every label lost unseen; a class of photos
    named `mask` beside `no_mask`, numbered alike, is not such a pair."""
    out: list[tuple[Path, Path]] = []
    level = [folder]
    for _ in range(depth):
        below: list[Path] = []
        for parent in level:
            subs = sorted(Path(e.path) for e in _entries(parent) if e.is_dir())
            files = {p: _image_files(p) for p in subs}
            for masks in subs:
                if masks.name.lower() not in MASK_FOLDER_NAMES or not files[masks]:
                    continue
                for other in subs:
                    common = sorted(set(files[masks]) & set(files[other])) if other != masks else []
                    if 2 * len(common) >= len(files[masks]) and common:
                        stem = common[0]
                        if _is_mask_of(files[masks][stem], files[other][stem]):
                            out.append((other, masks))
                            break
            below.extend(subs)
        level = below
    return out


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:  # entry types come with the listing: no stat per file
        return [e for e in it if not e.name.startswith(".")]


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files of `folder` by stem (GIF too: masks come as GIF, Carvana's do)."""
    return {
        Path(e.name).stem: Path(e.path)
        for e in _entries(folder)
        if e.is_file() and Path(e.name).suffix.lower() in MASK_SUFFIXES
    }


def _is_mask_of(mask: Path, image: Path) -> bool:
    """Whether `mask` looks like a label image of `image`: the same size, and at most
    `MASK_COLOURS` distinct colours (a photo has thousands)."""
    try:
        with Image.open(mask) as m, Image.open(image) as im:
            if m.size != im.size:
                return False
            return m.getcolors(maxcolors=MASK_COLOURS) is not None
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
