"""Format registry and the ingest stage entry point.

Each reader module exposes `FORMAT`. Readers of one tool's exports live with that tool
(`labelloop.labelstudio.reader`, `labelloop.cvat.reader`), the generic ones in
`labelloop.ingest.readers`; they are named here by module path and imported on first use,
so the ingest stage never imports a tool package. The order below is the order
`--format auto` tries them (specific formats before the generic image folder)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import import_module
from pathlib import Path

from labelloop.context import Context
from labelloop.domain import Split
from labelloop.errors import InputError
from labelloop.imaging import allow_pixels
from labelloop.ingest.archive import safe_extract
from labelloop.ingest.core import IngestReport, drop_unreferenced, ingest_records
from labelloop.ingest.readers.folders import class_like
from labelloop.ingest.records import Format, ReadOptions, SourceRecord
from labelloop.ingest.sniff import refuse_image_pool
from labelloop.projects import get_project
from labelloop.storage import BlobStore, sha256_bytes

READERS = [
    "labelloop.labelstudio.reader",
    "labelloop.cvat.reader",
    "labelloop.ingest.readers.coco",
    "labelloop.ingest.readers.voc",
    "labelloop.ingest.readers.dota",
    "labelloop.ingest.readers.yolo",
    "labelloop.ingest.readers.labelme",
    "labelloop.ingest.readers.createml",
    # Before `masks`: images/ + masks/<stem>_<k>.png would otherwise read as class masks.
    "labelloop.ingest.readers.object_masks",
    "labelloop.ingest.readers.masks",
    "labelloop.ingest.readers.folders",
    "labelloop.ingest.readers.images",
]


@cache
def formats() -> dict[str, Format]:
    out: dict[str, Format] = {}
    for module in READERS:
        fmt: Format = import_module(module).FORMAT
        out[fmt.name] = fmt
    return out


def detect_format(path: Path) -> str:
    """The first format whose detector accepts `path`. A folder that only the image-pool
    reader accepts but that holds annotation-like files is refused (`sniff`): silently
    ingesting an export as unlabeled images is the one failure a user cannot see."""
    for fmt in formats().values():
        if fmt.detect(path):
            if fmt.name == "images" and path.is_dir():
                tried = [n for n in formats() if n != "images"]
                refuse_image_pool(path, tried, class_like(path))
            return fmt.name
    if path.is_dir():
        refuse_image_pool(path, list(formats()), class_like(path))
    raise InputError(
        f"cannot detect the format; pass --format ({', '.join(formats())})", file=str(path)
    )


class DryRunBlobs:
    """The blob store as a dry run sees it: keys are computed and existing blobs read,
    nothing is stored."""

    def __init__(self, blobs: BlobStore):
        self._blobs = blobs

    def key_for(self, sha256: str, prefix: str, suffix: str = "") -> str:
        return self._blobs.key_for(sha256, prefix, suffix)

    def exists(self, key: str) -> bool:
        return self._blobs.exists(key)

    def put_bytes(self, data: bytes, prefix: str = "blobs", suffix: str = "") -> tuple[str, str]:
        digest = sha256_bytes(data)
        return self._blobs.key_for(digest, prefix, suffix), digest


def parse_label_map(pairs: list[str] | str | None) -> dict[str, str]:
    """'a=b,c=d' or ['a=b', 'c=d'] -> {'a': 'b', 'c': 'd'}."""
    if not pairs:
        return {}
    items = pairs.split(",") if isinstance(pairs, str) else [p for x in pairs for p in x.split(",")]
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"label map entry {item!r} is not 'source=target'")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def pin_split(records: Iterable[SourceRecord], split: str) -> Iterator[SourceRecord]:
    for rec in records:
        rec.meta = {**rec.meta, "split": split}
        yield rec


def ingest_path(
    ctx: Context,
    project_name: str,
    path: str | Path,
    *,
    fmt: str = "auto",
    skip_invalid: bool = False,
    label_map: dict[str, str] | None = None,
    image_root: str | Path | None = None,
    source: str | None = None,
    label_config: str | Path | None = None,
    split: str | None = None,
    on_record: Callable[[int], None] | None = None,
    dry_run: bool = False,
    edit: bool = False,
) -> IngestReport:
    """The ingest stage: one transaction for the whole path; nothing is written on error.

    `dry_run` reads and checks everything as an ingest would (labels against the project,
    shapes against their images, every bad record listed), reports per file, and writes
    nothing: the transaction is rolled back and no blob is stored.

    A .zip is extracted safely into a temporary folder named after the archive first.
    `split` (train / val / test) pins every image of this ingest to that split in all
    future dataset versions, e.g. a dataset's official test set. `source` names where the
    input came from (readers derive a name when absent); `edit` accepts a known record
    whose image changed, which is otherwise refused as a clash of two sources."""
    if split is not None and split not in {sp.value for sp in Split}:
        raise InputError(f"split must be train, val or test, got {split!r}")
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", file=str(path))
    root = Path(image_root) if image_root else None
    config = Path(label_config) if label_config else None
    opts = ReadOptions(source=source, image_root=root, label_config=config)
    if path.is_file() and path.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="labelloop-zip-") as tmp:
            inner = _archive_root(safe_extract(path, Path(tmp) / path.stem), path, fmt)
            return _ingest(
                ctx,
                project_name,
                inner,
                fmt,
                opts,
                skip_invalid,
                label_map,
                on_record,
                split,
                dry_run,
                edit,
            )
    return _ingest(
        ctx, project_name, path, fmt, opts, skip_invalid, label_map, on_record, split, dry_run, edit
    )


def _archive_root(top: Path, archive: Path, fmt: str) -> Path:
    """The folder of an extracted archive to read: the one the archive was made from, so
    that its records and source are those of that folder read directly.

    `top` is the archive's single top-level folder when it has one (`safe_extract`). A
    folder named like the archive (malaria.zip holding malaria/) is the zipped folder.
    Under another name it is either the export folder a tool put in its archive (Label
    Studio's export/) or part of a flat archive's layout (malaria.zip holding only
    train/<class>/): the archive's own folder is read when the format reads it there."""
    whole = top.parent
    if top.name == archive.stem or whole.name != archive.stem or not top.is_dir():
        return top
    try:
        reads = detect_format(whole) != "images" if fmt == "auto" else formats()[fmt].detect(whole)
    except (InputError, KeyError):
        reads = False  # refused there (annotation files below an image pool), or no format
    return whole if reads else top


def _ingest(
    ctx: Context,
    project_name: str,
    path: Path,
    fmt: str,
    opts: ReadOptions,
    skip_invalid: bool,
    label_map: dict[str, str] | None,
    on_record: Callable[[int], None] | None,
    split: str | None = None,
    dry_run: bool = False,
    edit: bool = False,
) -> IngestReport:
    allow_pixels(ctx.settings.max_image_pixels)  # readers probe image headers with Pillow
    name = detect_format(path) if fmt == "auto" else fmt
    if name not in formats():
        raise InputError(f"unknown format {fmt!r}; choose one of: auto, {', '.join(formats())}")
    records = formats()[name].read(path, opts)
    if split is not None:
        records = pin_split(records, split)
    report = IngestReport(format=name, dry_run=dry_run)
    created: list[str] = []
    try:
        with ctx.db.session() as s:
            project = get_project(s, project_name)
            try:
                ingest_records(
                    s,
                    DryRunBlobs(ctx.blobs) if dry_run else ctx.blobs,
                    project,
                    records,
                    skip_invalid=skip_invalid or dry_run,  # a dry run lists every problem
                    label_map=label_map,
                    max_pixels=ctx.settings.max_image_pixels,
                    report=report,
                    on_record=on_record,
                    created_blobs=None if dry_run else created,
                    per_file=dry_run,
                    allow_edit=edit,
                )
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON ({exc})", file=str(path)) from None
            if dry_run:
                s.rollback()
    finally:  # blobs of a rolled-back ingest or of skipped records: nothing refers to them
        if created:
            with ctx.db.session() as s:
                drop_unreferenced(s, ctx.blobs, created)
    return report
