"""Apple CreateML object-detection JSON (also Roboflow's 'CreateML' download).

A JSON list with one entry per image: `{"image": "x.jpg", "annotations": [{"label": "RBC",
"coordinates": {"x": cx, "y": cy, "width": w, "height": h}}]}`, box centres and sizes in
pixels. Roboflow writes `train/_annotations.createml.json` beside the images of each
subset folder; those subsets are pinned splits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ijson

from labelloop.domain import Box
from labelloop.errors import InputError
from labelloop.ingest.readers._imagefiles import (
    finite,
    first_inside,
    relative_ref,
    unclaimed_images,
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


def _looks_createml(path: Path) -> bool:
    """A JSON list whose first entry has the keys `image` and `annotations` and no `data`
    (a Label Studio task); the file's first 64 KB decide."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False
    if not head.startswith(b"["):
        return False
    keys: set[str] = set()
    try:
        for prefix, event, value in ijson.parse(head, use_float=True):
            if prefix == "item" and event == "map_key":
                keys.add(value)
            elif prefix == "item" and event == "end_map":
                break
    except (ijson.JSONError, UnicodeDecodeError):
        pass  # the head ends inside the first entry: the keys seen so far decide
    return {"image", "annotations"} <= keys and "data" not in keys


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix.lower() == ".json" and _looks_createml(path) else []
    found = sorted(path.glob("*.json"))
    for sub in split_folders(path):
        found += sorted(sub.glob("*.json"))
    return [p for p in found if _looks_createml(p)]


def _refuse_other_folders(path: Path) -> None:
    """CreateML files in subfolders that are not splits are not read with this folder:
    said before anything is, rather than their images and boxes left behind unseen."""
    splits = set(split_folders(path))
    others = [
        f
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and p not in splits)
        for f in sorted(sub.glob("*.json"))
        if _looks_createml(f)
    ]
    if others:
        listed = ", ".join(str(f.relative_to(path)) for f in others[:4])
        raise InputError(
            f"CreateML file(s) in folders that are not splits (train/ valid/ test/): "
            f"{listed}; ingest each such folder on its own",
            file=str(path),
        )


def detect(path: Path) -> bool:
    return bool(_files(path))


def read_createml(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    files = _files(path)
    if not files:
        raise InputError("no CreateML JSON (a list of {image, annotations})", file=str(path))
    root = (path if path.is_dir() else path.parent).resolve()
    source = opts.source or default_source("createml", root)
    if path.is_dir():
        _refuse_other_folders(path)
    claimed: set[Path] = set()
    keys: set[str] = set()
    for file in files:
        folder = file.parent.resolve()
        prefix = folder.relative_to(root).as_posix() if folder != root else ""
        meta = split_meta(folder.name) if prefix else {}
        bases = [opts.image_root.resolve()] if opts.image_root else [folder, root]
        for rec in _read_file(file, prefix, meta, bases, source):
            keys.add(rec.external_id)
            if rec.error is None:
                claimed.add(Path(rec.meta["image_path"]).resolve())
            yield rec
    if path.is_file():
        return  # one file given on its own: its folder is not the dataset
    # An image beside the files that none of them lists: unlabeled, not nothing.
    for folder in sorted({f.parent.resolve() for f in files}):
        meta = split_meta(folder.name) if folder != root else {}
        for key, image in unclaimed_images(folder.iterdir(), root, claimed, keys, suffix=True):
            yield image_record(
                source=source,
                external_id=key,
                uri=image.name,
                file=str(image),
                name=f"image {image.name!r} (in no CreateML file)",
                image=image,
                annotations=[],
                meta=dict(meta),
            )


def _read_file(
    file: Path, prefix: str, meta: dict, bases: list[Path], source: str
) -> Iterator[SourceRecord]:
    try:
        entries = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"invalid JSON ({exc})", file=str(file)) from None
    if not isinstance(entries, list):
        raise InputError("a CreateML file is a JSON list of images", file=str(file))
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        ref = entry.get("image") if isinstance(entry, dict) else None
        key = f"{prefix}/{ref}" if prefix else str(ref)
        name = f"entry {index} '{ref}'"
        try:
            if not isinstance(ref, str) or not ref.strip():
                raise InputError("entry has no 'image' file name", file=str(file), record=name)
            if key in seen:
                raise InputError(f"image {ref!r} is listed twice", file=str(file), record=name)
            seen.add(key)
            rel = relative_ref(ref)
            image = first_inside(
                [b / rel for b in bases] + [b / Path(rel).name for b in bases], bases
            )
            if image is None:
                looked = ", ".join(str(b) for b in bases)
                raise InputError(
                    f"image file {ref!r} not found (looked in {looked})",
                    file=str(file),
                    record=name,
                )
            shapes = _boxes(entry.get("annotations"), str(file), name)
        except InputError as exc:
            yield error_record(exc, source=source, external_id=key, file=str(file), name=name)
            continue
        yield image_record(
            source=source,
            external_id=key,
            uri=rel,
            file=str(file),
            name=name,
            image=image,
            annotations=[RecordAnnotation(external_id="createml", shapes=shapes)],
            meta=dict(meta),
        )


def _boxes(anns: object, file: str, name: str) -> list[Box]:
    if anns is None:
        return []
    if not isinstance(anns, list):
        raise InputError("'annotations' is not a list", file=file, record=name)
    out = []
    for i, ann in enumerate(anns, start=1):
        where = f"{name} / annotation {i}"
        if not isinstance(ann, dict) or not isinstance(ann.get("coordinates"), dict):
            raise InputError("annotation has no 'coordinates' object", file=file, record=where)
        label = ann.get("label")
        if not isinstance(label, str) or not label.strip():
            raise InputError("annotation has no label", file=file, record=where)
        c = ann["coordinates"]
        cx, cy, w, h = (
            finite(c.get(k), k, file=file, record=where) for k in ("x", "y", "width", "height")
        )
        if w <= 0 or h <= 0:
            raise InputError(f"box has zero size (w {w:g}, h {h:g})", file=file, record=where)
        out.append(Box(label=label.strip(), x=cx - w / 2, y=cy - h / 2, w=w, h=h))
    return out


FORMAT = Format(
    "createml",
    read_createml,
    detect,
    "CreateML object-detection JSON (Apple, Roboflow 'CreateML'): json; centre-size pixel "
    "boxes; train/ valid/ test/ pinned",
)
