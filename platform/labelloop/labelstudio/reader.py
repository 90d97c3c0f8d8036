"""Label Studio JSON export files (streamed, so a 100k-task export stays flat in memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ijson

from labelloop.errors import InputError
from labelloop.ingest.records import (
    Format,
    ReadOptions,
    RecordAnnotation,
    SourceRecord,
    error_record,
    image_record,
)
from labelloop.ingest.streaming import check_nesting, json_buffer
from labelloop.labelstudio.convert import results_to_shapes
from labelloop.labelstudio.export import (
    ExportedAnnotation,
    LocalImages,
    image_reference,
    is_json_min,
    iter_export_tasks,
    task_annotations,
)
from labelloop.labelstudio.label_config import LabelConfig, parse_label_config


def _annotator(ann: ExportedAnnotation) -> str | None:
    who = ann.completed_by
    if isinstance(who, dict):
        return str(who.get("email") or who.get("id") or "") or None
    return None if who is None else str(who)


def _is_export(path: Path, max_events: int = 200_000, *, empty: bool = True) -> bool:
    """A JSON array whose first task has a `data` key. Streams the first task's keys, since
    Label Studio writes `data` after `annotations`, which can run to megabytes. `empty`:
    whether `[]` counts (an empty export given by name does; a stray `[]` in a folder of
    other JSON does not, or a LabelMe folder would be read as an empty export)."""
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    with open(path, "rb") as f:
        head = f.read(512)
        start = 3 if head.startswith(b"\xef\xbb\xbf") else 0  # a BOM: ijson would stop at it
        first = head[start:].lstrip(b" \t\r\n")[:1]
        if first == b"{":
            return _is_single_task(f, max_events, start)
        if first != b"[":
            return False
        f.seek(start)
        try:
            check_nesting(path, file=str(path))
            events = ijson.parse(f, use_float=True, buf_size=json_buffer(f.name))
            for n, (prefix, event, value) in enumerate(events):
                # JSON: tasks with `data`; JSON-MIN: flat rows with `annotation_id`
                if prefix == "item" and event == "map_key" and value in ("data", "annotation_id"):
                    return True
                if (prefix == "item" and event == "end_map") or n > max_events:
                    return False
                if prefix == "item" and event not in ("start_map", "map_key"):
                    return False  # a list of names or numbers (a label map), not of tasks
                if prefix == "" and event == "end_array":
                    return empty  # an empty export
        except ijson.JSONError:
            return False
    return False


def _is_single_task(f, max_events: int, start: int = 0) -> bool:
    """One task object (as Label Studio's own examples are kept): a top-level `data`
    object, and no COCO `images`."""
    f.seek(start)
    try:
        check_nesting(f.name, file=f.name)
        events = ijson.parse(f, use_float=True, buf_size=json_buffer(f.name))
        for n, (prefix, event, value) in enumerate(events):
            if prefix == "" and event == "map_key" and value in ("images", "categories"):
                return False
            if prefix == "data" and event == "start_map":
                return True
            if n > max_events or (prefix == "" and event == "end_map"):
                return False
    except (ijson.JSONError, UnicodeDecodeError):
        return False
    return False


def _export_in(path: Path) -> Path | None:
    """The export file itself, or the single export JSON at the top of a folder (an
    unpacked archive: export + images)."""
    if path.is_file():
        return path if _is_export(path) else None
    candidates = sorted(path.glob("*.json"))
    found = [p for p in candidates if _is_export(p, empty=len(candidates) == 1)]
    return found[0] if len(found) == 1 else None


def detect(path: Path) -> bool:
    return _export_in(path) is not None


def read_labelstudio_export(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    """Yield one record per task. The source name is stable across re-exports of the same
    Label Studio project (`labelstudio:project-<id>`), so re-ingesting a newer export of
    it updates revisions instead of duplicating tasks."""
    if path.is_dir():
        export = _export_in(path)
        if export is None:
            raise InputError("no single Label Studio export JSON in this folder", file=str(path))
        path = export
    images = LocalImages(opts.image_root or path.parent)
    source, image_key = opts.source, opts.image_key
    config = _label_config(path, opts)
    # Not strict: a task that is not an object is that record's error, and the rest of
    # the export is still read (a raise would end the stream).
    for index, task in enumerate(iter_export_tasks(path, strict=False)):
        if index == 0 and isinstance(task, dict) and "data" not in task and _top_is_object(path):
            keys = ", ".join(list(task)[:8]) or "(none)"
            raise InputError(
                f"a JSON object with keys {keys}: not a Label Studio export (a list of "
                "tasks, or one task object with 'data')",
                file=str(path),
            )
        if not isinstance(task, dict) or ("data" not in task and not is_json_min(task)):
            what = "not a JSON object" if not isinstance(task, dict) else "has no 'data'"
            yield error_record(
                f"task {what}",
                source=source or "labelstudio:file",
                external_id=f"#{index}",
                file=str(path),
                name=f"task #{index}",
            )
            continue
        task_id = str(task.get("id", f"#{index}"))
        record = f"task {task_id}"
        src = source or (
            f"labelstudio:project-{task['project']}" if task.get("project") else "labelstudio:file"
        )
        try:
            yield _record(task, path, images, src, task_id, record, image_key, config)
        except InputError as exc:
            yield error_record(exc, source=src, external_id=task_id, file=str(path), name=record)


def _top_is_object(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def _label_config(path: Path, opts: ReadOptions) -> LabelConfig | None:
    """The labeling config JSON-MIN rows need to tell control names from data fields:
    --label-config, else a `label_config.xml` beside the export (as `push --to file`
    writes it)."""
    candidate = opts.label_config or path.parent / "label_config.xml"
    if not candidate.is_file():
        if opts.label_config:
            raise InputError("labeling config not found", file=str(candidate))
        return None
    return parse_label_config(candidate.read_text())


def _record(
    task: dict,
    path: Path,
    images: LocalImages,
    src: str,
    task_id: str,
    record: str,
    image_key: str,
    config: LabelConfig | None,
) -> SourceRecord:
    ref = image_reference(task, image_key)
    anns = []
    unlabeled: list[str] = []
    for ann in task_annotations(task, config, include_cancelled=True):
        shapes = results_to_shapes(
            ann.results, file=str(path), record=ann.record, unlabeled=unlabeled
        )
        anns.append(
            RecordAnnotation(
                external_id=str(ann.annotation_id),
                shapes=shapes,
                annotator=_annotator(ann),
                ground_truth=ann.ground_truth,
                updated_at=ann.updated_at,
                cancelled=ann.cancelled,
            )
        )
    try:
        image_path = images.resolve(ref)
    except InputError as exc:  # the resolver names the reference; the user needs the task
        raise InputError(
            f"image {exc.record or ref}: {exc.reason}", file=str(path), record=record
        ) from None
    rec = image_record(
        source=src,
        external_id=task_id,
        uri=ref,
        file=str(path),
        name=record,
        image=image_path,
        annotations=anns,
    )
    rec.warnings.extend(f"{path} {note}" for note in unlabeled)
    return rec


FORMAT = Format(
    "labelstudio",
    read_labelstudio_export,
    detect,
    "Label Studio JSON export: streamed with ijson; shapes via labelloop.labelstudio.convert "
    "(brush RLE through label-studio-sdk)",
)
