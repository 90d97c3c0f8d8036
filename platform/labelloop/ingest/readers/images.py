"""A plain folder of images: the unlabeled pool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from labelloop.errors import InputError
from labelloop.ingest.records import Format, ReadOptions, SourceRecord, default_source, file_loader

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in IMAGE_SUFFIXES
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*"))


def read_image_folder(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """Every image below `path` (sorted, symlinks that leave the folder refused)."""
    source = opts.source
    root = path.resolve()
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise InputError(
            "no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")", file=str(path)
        )
    src = source or default_source("files", root if root.is_dir() else root.parent)
    for f in files:
        real = f.resolve()
        if path.is_dir() and not real.is_relative_to(root):
            raise InputError(f"symlink points outside {root}", file=str(f))
        rel = str(f.relative_to(path)) if path.is_dir() else f.name
        load = file_loader(real, file=str(f), record=rel)
        yield SourceRecord(source=src, external_id=rel, uri=rel, file=str(f), load=load)


FORMAT = Format(
    "images",
    read_image_folder,
    detect,
    "a folder of images without labels (the unlabeled pool): Pillow",
)
