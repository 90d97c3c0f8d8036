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
from labelloop.ingest.archive import safe_extract
from labelloop.ingest.core import IngestReport, ingest_records
from labelloop.ingest.records import Format, ReadOptions, SourceRecord
from labelloop.projects import get_project

READERS = [
    "labelloop.labelstudio.reader",
    "labelloop.cvat.reader",
    "labelloop.ingest.readers.coco",
    "labelloop.ingest.readers.voc",
    "labelloop.ingest.readers.yolo",
    "labelloop.ingest.readers.labelme",
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
    for fmt in formats().values():
        if fmt.detect(path):
            return fmt.name
    raise InputError(
        f"cannot detect the format; pass --format ({', '.join(formats())})", file=str(path)
    )


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
) -> IngestReport:
    """The ingest stage: one transaction for the whole path; nothing is written on error.

    A .zip is extracted safely into a temporary folder named after the archive first.
    `split` (train / val / test) pins every image of this ingest to that split in all
    future dataset versions, e.g. a dataset's official test set."""
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
            inner = safe_extract(path, Path(tmp) / path.stem)
            opts = ReadOptions(
                source=source, image_root=root, label_config=config, origin=f"zip:{path.name}"
            )
            return _ingest(
                ctx, project_name, inner, fmt, opts, skip_invalid, label_map, on_record, split
            )
    return _ingest(ctx, project_name, path, fmt, opts, skip_invalid, label_map, on_record, split)


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
) -> IngestReport:
    name = detect_format(path) if fmt == "auto" else fmt
    if name not in formats():
        raise InputError(f"unknown format {fmt!r}; choose one of: auto, {', '.join(formats())}")
    records = formats()[name].read(path, opts)
    if split is not None:
        records = pin_split(records, split)
    report = IngestReport(format=name)
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        try:
            ingest_records(
                s,
                ctx.blobs,
                project,
                records,
                skip_invalid=skip_invalid,
                label_map=label_map,
                max_pixels=ctx.settings.max_image_pixels,
                report=report,
                on_record=on_record,
            )
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc})", file=str(path)) from None
    return report
