"""Class folders: one folder per class, the way classification data usually arrives.

`root/<class>/*.png` (torchvision `ImageFolder`, Kaggle, lab exports), optionally under
`root/{train,val,test}/` whose names pin the split of every image below them. Each image
becomes one record with one class tag named after its folder (`--label-map` renames it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from labelloop.domain import Tag
from labelloop.errors import InputError
from labelloop.ingest.readers._imagefiles import file_refusal, visible
from labelloop.ingest.readers._maskpairs import mask_folders
from labelloop.ingest.readers.images import IMAGE_SUFFIXES
from labelloop.ingest.readers.splits import split_of
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    default_source,
    error_record,
    image_record,
)

ANNOTATION_ID = "folder"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in visible(folder) if p.is_dir()]


def _all_images(folder: Path) -> bool:
    entries = visible(folder)
    return bool(entries) and all(_is_image(p) for p in entries)


def split_layout(root: Path) -> list[Path]:
    """The subfolders of `root` when every one is a split name (the split layout), else
    none: one class named `test` among others stays a class."""
    subs = _subfolders(root)
    return subs if subs and all(split_of(p.name) for p in subs) else []


def class_folders(root: Path) -> list[tuple[str | None, Path]]:
    """(pinned split or None, class folder) pairs: the split layout when every subfolder
    of `root` is a split name, else the flat layout."""
    if splits := split_layout(root):
        return [(split_of(s.name), c) for s in splits for c in _subfolders(s)]
    return [(None, c) for c in _subfolders(root)]


def detect(path: Path) -> bool:
    """A folder with no loose images whose class folders (at least two in all) each hold
    images and nothing else, and none of which holds the masks of another's images
    (`images/` + `labels/` of one stem each are a mask dataset, not two classes)."""
    if not path.is_dir() or any(_is_image(p) for p in visible(path)):
        return False
    folders = class_folders(path)
    if len({c.name for _, c in folders}) < 2 or not all(_all_images(c) for _, c in folders):
        return False
    return not mask_folders(path)


def class_like(path: Path) -> list[Path]:
    """The class folders of `path` that hold images of their own: two or more of them in
    a folder the class-folder reader does not take (a nested folder, an empty class, a
    file of another type) look like classes all the same, and are not an image pool."""
    if not path.is_dir() or any(_is_image(p) for p in visible(path)):
        return []  # loose images beside the folders: an image pool
    return [c for _, c in class_folders(path) if any(_is_image(p) for p in visible(c))]


def read_class_folders(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """One record per image with its folder's class tag; errors per record: an empty class
    folder, a file that is not an image, the same image (by content) under two classes or
    two splits."""
    if not path.is_dir():
        raise InputError("class folders need a folder, not a file", file=str(path))
    root = path.resolve()
    folders = class_folders(path)
    if not folders:
        raise InputError("no class folders found (expected <class>/ image folders)", file=str(path))
    source = opts.source or default_source("folders", root)

    def refused(reason: str, at: Path) -> SourceRecord:
        rel = at.relative_to(path).as_posix()
        return error_record(reason, source=source, external_id=rel, file=str(at), name=rel)

    # An image beside the class folders belongs to no class: refused, never passed over
    # (a note or a CSV there is the dataset's own, and allowed); so is one in a split
    # folder without class folders (Kaggle's unlabeled test/).
    for place in [path, *split_layout(path)]:
        for f in visible(place):
            if _is_image(f) and place == path:
                yield refused(f"{f.name} lies beside the class folders, in no class", f)
            elif _is_image(f):
                split = place.name
                yield refused(
                    f"{f.name} lies in {split}/ outside any class folder (unlabeled?); "
                    f"ingest {split}/ on its own with --format images --split "
                    f"{split_of(split)}, or pass --skip-invalid to leave such images out",
                    f,
                )
    seen: dict[str, tuple[str, str | None, str]] = {}  # sha256 -> (class, split, where)
    for split, folder in folders:
        label = folder.name
        rel_folder = folder.relative_to(path).as_posix()
        entries = visible(folder)
        if not entries:
            yield refused(f"class folder {rel_folder}/ holds no images", folder)
            continue
        for f in entries:
            rel = f.relative_to(path).as_posix()
            fail = file_refusal(f, root, "a class folder")
            data = b""
            if fail is None:
                try:
                    data = f.read_bytes()
                except OSError as exc:
                    fail = f"{f.name} cannot be read ({exc.strerror})"
            if fail is None:
                sha = hashlib.sha256(data).hexdigest()
                first = seen.setdefault(sha, (label, split, rel))
                if first[:2] != (label, split):
                    what = f"class {first[0]!r}" if first[0] != label else f"split {first[1]!r}"
                    fail = f"the same image is also {first[2]} ({what})"
            if fail is not None:
                yield refused(fail, f)
                continue
            meta = {"class_folder": rel_folder, **({"split": split} if split else {})}
            yield image_record(
                source=source,
                external_id=rel,
                uri=rel,
                file=str(f),
                name=rel,
                image=f,
                annotations=[RecordAnnotation(ANNOTATION_ID, [Tag(label=label)])],
                meta=meta,
                load=lambda data=data: data,
            )


FORMAT = Format(
    "folders",
    read_class_folders,
    detect,
    "one folder per class (<class>/*.png, optionally under train/ val/ test/): class tags",
)
