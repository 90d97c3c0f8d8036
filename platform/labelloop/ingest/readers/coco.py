"""COCO instances / keypoints JSON (and CVAT's 'COCO 1.0' export, which is plain COCO).

COCO keeps images and annotations in separate arrays, and annotations are not ordered by
image, so a stream cannot group them on the fly. The file is read with ijson in three
C-speed passes (categories, images, annotations); annotations are spilled into a
temporary on-disk SQLite table keyed by image, so memory holds the image list only, never
the annotations of a 100k-image dataset.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson

from labelloop.domain import GROUP_KEYS, Shape
from labelloop.errors import InputError
from labelloop.ingest.readers.coco_shapes import Category, ImageInfo, annotation_shapes, id_key
from labelloop.ingest.readers.image_lookup import ImageFinder
from labelloop.ingest.readers.splits import split_folders, split_meta, split_of
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    error_record,
    image_record,
)
from labelloop.ingest.streaming import check_nesting, json_buffer

_BOM = b"\xef\xbb\xbf"
_ARRAYS = ("images", "annotations", "categories")
_SUBSET_PREFIXES = ("instances_", "person_keypoints_")


def _head(path: Path, size: int = 8192) -> bytes:
    with open(path, "rb") as f:
        head = f.read(size)
    return head[len(_BOM) :] if head.startswith(_BOM) else head


def _looks_coco(path: Path) -> bool:
    """True when the file is a JSON object whose top level holds a COCO array."""
    try:
        head = _head(path)
    except OSError:
        return False
    if not head.lstrip().startswith(b"{"):
        return False
    key, found = None, False
    try:
        for prefix, event, value in ijson.parse(head, use_float=True):
            if prefix == "" and event == "map_key":
                if value == "data":  # a Label Studio task object, not COCO
                    return False
                key = value
            elif prefix == key and key in _ARRAYS and event == "start_array":
                if key != "annotations":
                    return True
                found = True  # annotations first: COCO unless they are Label Studio's
            elif prefix == "annotations.item" and event == "map_key" and value == "result":
                return False
    except (ijson.JSONError, UnicodeDecodeError):
        pass  # the head ends mid-document: keys seen so far decide
    return found


def _json_files(path: Path, limit: int | None = None) -> list[Path]:
    """COCO files in a folder (`annotations/*.json`, `*.json`); `limit` caps how many are
    opened, so detecting a folder of per-image JSON (LabelMe) stays cheap."""
    if path.is_file():
        return [path] if path.suffix.lower() == ".json" and _looks_coco(path) else []
    found = sorted((path / "annotations").glob("*.json")) + sorted(path.glob("*.json"))
    for sub in split_folders(path):  # Roboflow: train/_annotations.coco.json beside images
        found += sorted(sub.glob("*.json"))
    return [p for p in found[:limit] if p.is_file() and _looks_coco(p)]


def detect(path: Path) -> bool:
    return bool(_json_files(path, limit=20))


def _dataset_folder(path: Path) -> Path:
    """The export's own folder (COCO and CVAT keep the JSON in its annotations/ folder)."""
    folder = path if path.is_dir() else path.parent
    return folder.parent if folder.name == "annotations" else folder


def read_coco(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """Yield one record per COCO image, in the order of the `images` array.

    A folder is read file by file (`*.json`, `annotations/*.json`); the subset comes from
    the file name (`instances_val2017.json` -> `val2017`)."""
    files = [path] if path.is_file() else _json_files(path)
    if not files:
        raise InputError(
            "no COCO JSON found (looked at *.json, annotations/*.json)", file=str(path)
        )
    dataset = _dataset_folder(path).resolve()
    source = opts.source or f"coco:{dataset.name or 'dataset'}"
    for file in files:
        yield from _read_file(file, dataset, source, opts)


def _subset(file: Path, dataset: Path) -> str:
    """The subset a COCO file describes: its subset folder (`train/` of a Roboflow
    download), else the JSON's name less its kind (`instances_val2017` -> `val2017`), and
    the shortest `_`-suffix of the name that is an image folder (`stuff_train2017` ->
    `images/train2017/`) when the name itself is not one."""
    if split_of(file.parent.name) and file.parent.resolve() != dataset:
        return file.parent.name
    stem = file.stem
    for prefix in _SUBSET_PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix) :]
    if stem.startswith("_annotations"):  # Roboflow's name says nothing about the subset
        return "default"
    parts = stem.split("_")
    folders = (dataset / "images", dataset, file.parent)
    for tail in ("_".join(parts[i:]) for i in range(len(parts))):
        if tail and any((f / tail).is_dir() for f in folders):
            return tail
    return stem


@dataclass
class _Reader:
    file: Path
    source: str
    subset: str
    finder: ImageFinder
    categories: dict[str, Category] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.file)

    def items(self, array: str) -> Iterator[Any]:
        """One top-level array, streamed; damage to the file is a stream-level error."""
        index = 0
        try:
            with open(self.file, "rb") as f:
                if f.read(len(_BOM)) != _BOM:
                    f.seek(0)
                for item in ijson.items(
                    f, f"{array}.item", use_float=True, buf_size=json_buffer(f.name)
                ):
                    yield item
                    index += 1
        except OSError as exc:
            raise InputError(f"cannot read ({exc.strerror or exc})", file=self.name) from None
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            section = _damaged_section(self.file) or array
            after = f" after {index} entries" if section == array else ""
            raise InputError(
                f"invalid or truncated JSON in '{section}'{after} ({exc})", file=self.name
            ) from None

    def bad_record(
        self, external_id: str, record: str, error: InputError | str, uri: str = ""
    ) -> SourceRecord:
        return error_record(
            error, source=self.source, external_id=external_id, file=self.name, name=record, uri=uri
        )


def _damaged_section(file: Path) -> str | None:
    """The top-level key being read where the JSON breaks: ijson reads the whole file for
    every array, so the array asked for is not where the damage is."""
    section = None
    try:
        with open(file, "rb") as f:
            if f.read(len(_BOM)) != _BOM:
                f.seek(0)
            for prefix, event, value in ijson.parse(
                f, use_float=True, buf_size=json_buffer(f.name)
            ):
                if prefix == "" and event == "map_key":
                    section = value
    except (ijson.JSONError, UnicodeDecodeError, OSError):
        return section
    return section


def _read_file(file: Path, dataset: Path, source: str, opts: ReadOptions) -> Iterator[SourceRecord]:
    head = _head(file).lstrip()
    if not head.startswith(b"{"):
        raise InputError(
            "not a COCO JSON (expected an object with images, annotations, categories)",
            file=str(file),
        )
    bases = (
        [opts.image_root]
        if opts.image_root
        else [file.parent, file.parent / "images", dataset, dataset / "images"]
    )
    check_nesting(file, file=str(file))
    reader = _Reader(file, source, _subset(file, dataset), ImageFinder(bases))
    reader.categories = _categories(reader.items("categories"), reader.name)
    images = list(reader.items("images"))
    if not images:
        raise InputError("the file lists no images", file=reader.name)
    with closing(sqlite3.connect("")) as db:  # "" = private on-disk temporary database
        db.execute("CREATE TABLE ann (image TEXT, seq INTEGER, body TEXT)")
        unusable = _spill_annotations(reader, db)
        db.execute("CREATE INDEX ann_image ON ann (image, seq)")
        known: set[str] = set()
        for index, raw in enumerate(images):
            yield _image_record(reader, db, raw, index, known)
        yield from _orphans(reader, db, known, unusable)


def _categories(items: Iterator[Any], file: str) -> dict[str, Category]:
    """Usable categories by id; a malformed entry is left out, so the annotations that use
    it fail with 'category N is not in categories' (that record's error, not the file's).
    An id listed twice under two names is the file's error: which name its annotations
    carry cannot be told, and keeping either would relabel them without a word."""
    out: dict[str, Category] = {}
    for cat in items:
        if not isinstance(cat, dict):
            continue
        key, name = id_key(cat.get("id")), cat.get("name")
        if key is None or not isinstance(name, str) or not name:
            continue
        names = cat.get("keypoints")
        points = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        if key in out and out[key].name != name:
            raise InputError(
                f"categories list id {key} twice, as {out[key].name!r} and {name!r}", file=file
            )
        out[key] = Category(name=name, keypoints=points)
    return out


def _spill_annotations(reader: _Reader, db: sqlite3.Connection) -> list[int]:
    """Store every annotation under its image key; return the positions of those that name
    no usable image id."""
    unusable: list[int] = []
    batch: list[tuple[str, int, str]] = []
    pending = 0  # characters held in `batch`: flushed at ~1 MB, whatever the row count
    for seq, ann in enumerate(reader.items("annotations")):
        if seq == 0 and isinstance(ann, dict):
            _refuse_other_tasks(ann, reader.name)
        key = id_key(ann.get("image_id")) if isinstance(ann, dict) else None
        if key is None:
            unusable.append(seq)
            continue
        body = json.dumps(ann)
        batch.append((key, seq, body))
        pending += len(body)
        if pending >= 1 << 20:
            db.executemany("INSERT INTO ann VALUES (?, ?, ?)", batch)
            batch.clear()
            pending = 0
    db.executemany("INSERT INTO ann VALUES (?, ?, ?)", batch)
    return unusable


def _refuse_other_tasks(ann: dict, file: str) -> None:
    """COCO's captions and panoptic files share the layout but hold no shapes of ours."""
    if "segments_info" in ann:
        raise InputError(
            "a COCO panoptic file (segments_info + PNG segment ids): not read; convert it "
            "to instances JSON (panopticapi's converters) and ingest that",
            file=file,
        )
    if "caption" in ann and "category_id" not in ann:
        raise InputError(
            "a COCO captions file: captions label no objects; ingest the instances JSON",
            file=file,
        )


def _image_record(
    reader: _Reader, db: sqlite3.Connection, raw: Any, index: int, known: set[str]
) -> SourceRecord:
    if not isinstance(raw, dict):
        return reader.bad_record(
            f"{reader.subset}/#{index}", f"images[{index}]", "image entry is not an object"
        )
    key, file_name = id_key(raw.get("id")), raw.get("file_name")
    ident = key if key is not None else f"#{index}"
    external_id = f"{reader.subset}/{ident}"
    record = f"image {ident} '{file_name}'"
    uri = file_name if isinstance(file_name, str) else ""
    if key is None:
        return reader.bad_record(external_id, record, "image has no usable id", uri)
    if key in known:
        return reader.bad_record(external_id, record, f"image id {key} appears twice", uri)
    known.add(key)
    rows = db.execute("SELECT seq, body FROM ann WHERE image = ? ORDER BY seq", (key,))
    try:
        if not uri:
            raise InputError("image has no file_name", file=reader.name, record=record)
        image = ImageInfo.from_entry(raw, file=reader.name, record=record)
        shapes: list[Shape] = []
        notes: list[str] = []
        for seq, body in rows:
            shapes += annotation_shapes(json.loads(body), seq, image, reader.categories, notes)
        path = reader.finder.find(uri, subset=reader.subset, file=reader.name, record=record)
    except InputError as exc:
        return reader.bad_record(external_id, record, exc, uri)
    meta: dict[str, Any] = {"subset": reader.subset, "coco_image_id": raw.get("id")}
    if reader.file.parent.name == reader.subset:
        meta.update(split_meta(reader.subset))
    extra = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    for k in GROUP_KEYS:
        value = raw.get(k, extra.get(k))
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            meta[k] = value
    rec = image_record(
        source=reader.source,
        external_id=external_id,
        uri=uri,
        file=reader.name,
        name=record,
        image=path,
        annotations=[RecordAnnotation(external_id=reader.file.stem, shapes=shapes)]
        if shapes
        else [],
        meta=meta,
        declared_size=(image.width, image.height) if image.width and image.height else None,
    )
    rec.warnings.extend(f"{reader.name}: {note}" for note in notes)
    return rec


def _orphans(
    reader: _Reader, db: sqlite3.Connection, known: set[str], unusable: list[int]
) -> Iterator[SourceRecord]:
    """Annotations that point at no listed image: each such image id is one bad record."""
    rows = db.execute("SELECT image, COUNT(*), MIN(seq) FROM ann GROUP BY image ORDER BY 3")
    for key, count, first in rows:
        if key not in known:
            yield reader.bad_record(
                f"{reader.subset}/{key}",
                f"image {key}",
                f"{count} annotation(s) (first: annotations[{first}]) refer to image id {key}, "
                "which is not in 'images'",
            )
    for seq in unusable:
        yield reader.bad_record(
            f"{reader.subset}/annotations[{seq}]",
            f"annotations[{seq}]",
            "annotation is not an object with a usable image_id",
        )


FORMAT = Format(
    "coco",
    read_coco,
    detect,
    "COCO instances/keypoints JSON (also CVAT 'COCO 1.0'): streamed with ijson; polygons "
    "and RLE through pycocotools",
)
