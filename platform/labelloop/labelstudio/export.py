"""Reading Label Studio exports: streaming tasks, JSON-MIN rows, image references.

Exports of real projects run to gigabytes (brush RLE is verbose), so tasks are streamed
with ijson one at a time instead of loading the file. Image references point into
storage the server shares with us; resolving one must never leave that storage root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import ijson

from labelloop.errors import InputError
from labelloop.ingest.readers._imagefiles import real_file
from labelloop.ingest.streaming import check_nesting, json_buffer
from labelloop.labelstudio.label_config import LabelConfig
from labelloop.times import parse_time

_BOM = b"\xef\xbb\xbf"


def iter_export_tasks(path: str | Path, *, strict: bool = True) -> Iterator[dict]:
    """Yield the tasks of a JSON or JSON-MIN export (a top-level list), one at a time.

    A file holding a single task object (as the frontend's examples do) yields that task.
    Truncated or invalid JSON raises InputError naming the file and the task index reached.
    """
    path = Path(path)
    name = str(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot open export ({exc.strerror})", file=name) from exc
    with f:
        head = f.read(4096)
        start = len(_BOM) if head.startswith(_BOM) else 0
        stripped = head[start:].lstrip()
        if not stripped:
            raise InputError("export is empty", file=name)
        if stripped[:1] not in (b"[", b"{"):
            raise InputError("not a Label Studio JSON export (expected a list of tasks)", file=name)
        prefix = "item" if stripped[:1] == b"[" else ""
        check_nesting(path, file=name)
        f.seek(start)
        index = 0
        try:
            for task in ijson.items(f, prefix, use_float=True, buf_size=json_buffer(f.name)):
                if strict and not isinstance(task, dict):
                    raise InputError(
                        "task is not a JSON object", file=name, record=f"task #{index}"
                    )
                yield task
                index += 1
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise InputError(
                f"invalid or truncated JSON after {index} complete tasks ({exc})",
                file=name,
                record=f"task #{index}",
            ) from exc


def is_json_min(task: dict) -> bool:
    """JSON-MIN rows are flat: data keys and control names side by side, no `annotations`."""
    return "annotations" not in task and "completions" not in task and "data" not in task


def json_min_results(row: dict, config: LabelConfig) -> list[dict]:
    """Turn one JSON-MIN row back into full results, using the config to find control keys."""
    record = f"task {row.get('id')} / annotation {row.get('annotation_id')}"
    results: list[dict] = []
    for control in config.controls:
        if control.name not in row:
            continue
        raw = row[control.name]
        rtype = control.result_type
        base = {"from_name": control.name, "to_name": control.to_name, "type": rtype}
        if rtype == "choices":
            if isinstance(raw, str):
                raw = {"choices": [raw]}
            elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
                raw = {"choices": raw}
            if not isinstance(raw, dict):
                raise InputError(f"{control.name}: unreadable choices {raw!r}", record=record)
            results.append({**base, "id": f"{control.name}-0", "value": dict(raw)})
            continue
        regions = [raw] if isinstance(raw, dict) else raw
        if not isinstance(regions, list) or not all(isinstance(x, dict) for x in regions):
            raise InputError(f"{control.name}: expected a list of regions", record=record)
        for i, region in enumerate(regions):
            sizes = ("original_width", "original_height")
            value = {k: v for k, v in region.items() if k not in sizes}
            result: dict[str, Any] = {**base, "id": f"{control.name}-{i}", "value": value}
            for key in sizes:
                if key in region:
                    result[key] = region[key]
            results.append(result)
    return results


@dataclass(frozen=True)
class ExportedAnnotation:
    task_id: Any
    annotation_id: Any
    completed_by: Any
    results: list[dict]
    record: str  # "task 12 / annotation 3", the prefix for error messages
    ground_truth: bool = False
    updated_at: str | None = None
    cancelled: bool = False


def task_annotations(
    task: dict,
    config: LabelConfig | None = None,
    *,
    include_cancelled: bool = False,
) -> list[ExportedAnnotation]:
    """The annotations of one exported task, from either JSON or JSON-MIN.

    JSON-MIN rows carry one annotation each and need the config to tell control keys
    from data keys. Skipped (cancelled) annotations are left out unless asked for.
    """
    tid = task.get("id")
    if is_json_min(task):
        if config is None:
            raise InputError(
                "a JSON-MIN export needs the labeling config: pass --label-config or put "
                "label_config.xml beside the export",
                record=f"task {tid}",
            )
        aid = task.get("annotation_id")
        return [
            ExportedAnnotation(
                tid,
                aid,
                task.get("annotator"),
                json_min_results(task, config),
                f"task {tid} / annotation {aid}",
                updated_at=_when(task, f"task {tid} / annotation {aid}"),
            )
        ]
    anns = task.get("annotations", task.get("completions", []))
    if not isinstance(anns, list):
        raise InputError("task annotations must be a list", record=f"task {tid}")
    out = []
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise InputError("annotation is not an object", record=f"task {tid} / annotation #{i}")
        aid = ann.get("id", f"#{i}")
        if (ann.get("was_cancelled") or ann.get("skipped")) and not include_cancelled:
            continue
        results = ann.get("result", [])  # null is no list: results_to_shapes refuses it
        record = f"task {tid} / annotation {aid}"
        out.append(
            ExportedAnnotation(
                tid,
                aid,
                ann.get("completed_by"),
                results,
                record,
                ground_truth=_flag(ann, "ground_truth", record),
                updated_at=_when(ann, record),
                cancelled=bool(ann.get("was_cancelled") or ann.get("skipped")),
            )
        )
    return out


def _flag(ann: dict, key: str, record: str) -> bool:
    """A true/false field, refused when it is anything else: `"false"` is a true string,
    and a ground truth read from it would outrank every other annotator's work."""
    value = ann.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise InputError(f"{key} is {value!r}, not true or false", record=record)


def _when(ann: dict, record: str) -> str | None:
    """`updated_at` (else `created_at`) as one UTC form, `2021-03-09T21:52:49.513742Z`.

    Of several annotators' work the most recently updated counts, chosen by comparing
    these strings; text that is no date, or dates written in other forms and zones,
    would pick the wrong one unseen. A time without a zone is taken as UTC."""
    key = "updated_at" if ann.get("updated_at") not in (None, "") else "created_at"
    value = ann.get(key)
    if value in (None, ""):
        return None
    when = parse_time(value)
    if when is None:
        raise InputError(f"{key} {value!r} is not an ISO 8601 date and time", record=record)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def image_reference(task: dict, image_key: str = "image") -> str:
    """data[image_key] of a task (JSON-MIN rows hold data keys at top level)."""
    data = task.get("data") if isinstance(task.get("data"), dict) else task
    ref = data.get(image_key)
    if not isinstance(ref, str) or not ref:
        raise InputError(
            f"task has no image reference in data.{image_key}", record=f"task {task.get('id')}"
        )
    return ref


def resolve_local_image(ref: str, root: Path) -> Path:
    """Map a Label Studio image reference onto an existing file under `root`.

    Understands `/data/local-files/?d=REL` (relative to the local-files document root),
    `/data/upload/<project>/<file>` (looked up under root/upload, then by basename) and plain
    paths. Anything that resolves outside root (.., absolute paths, symlinks) is refused.
    """
    return LocalImages(root).resolve(ref)


class LocalImages:
    """`resolve_local_image` for the many references of one export: the root is resolved
    once, and folders seen to hold no symlink are not walked again."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._base = str(self.root)
        self._inner = self._base.rstrip("/") + "/"  # what a path inside the root starts with
        self._plain_dirs: set[str] = set()

    def resolve(self, ref: str) -> Path:
        parsed = urlparse(ref)
        if parsed.path.rstrip("/") == "/data/local-files":
            d = parse_qs(parsed.query).get("d")
            if not d or not d[0]:
                raise InputError("local-files reference without ?d=", record=ref)
            candidates = [d[0]]
        elif parsed.path.startswith("/data/upload/"):
            rest = unquote(parsed.path[len("/data/upload/") :])
            base = rest.rsplit("/", 1)[-1]
            candidates = [f"upload/{rest}", f"upload/{base}", base]
        elif parsed.scheme in ("", "file") and not parsed.netloc:
            candidates = [unquote(parsed.path) if parsed.scheme == "file" else ref]
        else:
            raise InputError("image reference is not a local file", record=ref)
        for cand in candidates:
            path = self._inside(cand, ref)
            if path is not None:
                return path
        raise InputError(f"image not found under {self.root}", record=ref)

    def _inside(self, rel: str, ref: str) -> Path | None:
        """The file `rel` names under the root, None where there is none; a name that
        resolves outside the root is refused."""
        if "\x00" in rel:
            raise InputError("image reference contains a NUL byte", record=repr(ref))
        found = real_file(os.path.join(self._base, rel), self._plain_dirs)
        if found is not None and str(found).startswith(self._inner):
            return found
        try:
            path = (self.root / rel).resolve()
        except (OSError, RuntimeError) as exc:
            raise InputError(f"cannot resolve image reference ({exc})", record=ref) from exc
        if not path.is_relative_to(self.root):
            raise InputError(f"image reference escapes the storage root {self.root}", record=ref)
        return path if path.is_file() else None
