"""Live Label Studio sync: pull the tasks that changed since the last sync into a project.

Label Studio bumps a task's `updated_at` whenever one of its annotations is created,
edited, cancelled or deleted, so the tasks updated since the last sync are exactly those
whose annotations may have changed; a busy 100k-task project is then synced in seconds.

The cursor lives in `project.settings["sync"][<Label Studio URL + project>]` and is written
in the same transaction as the annotations: a failed sync leaves both untouched and the
next one retries the same tasks. It holds `updated_at`, the newest task time seen (the
server's clock, so ours never matters), and `seen`, task id -> updated_at for the tasks
inside the overlap window. The next pull asks for updated_at > cursor - overlap, which
catches a write that committed late with an earlier time stamp, and skips the tasks of
that window it has already seen unchanged. `deleted_tasks` lists the tasks found deleted
upstream, so the cheap deletion check (compare task counts) stays cheap afterwards.

What counts: every annotation of a pulled task goes through `ingest_records` (edited
content = a new revision superseding the old; was_cancelled = a "skipped" revision).
Annotations that disappeared from a pulled task, and those of tasks deleted upstream, are
marked "deleted". Several annotators on one task stay separate rows; which one a dataset
uses is decided in `labelloop.datasets.freeze.current_annotations` (ground truth first, then the
most recently updated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.context import Context
from labelloop.db.models import Annotation, Image, Project, SourceItem
from labelloop.domain import Shape
from labelloop.errors import InputError
from labelloop.ingest.core import IngestReport, ingest_records
from labelloop.ingest.records import RecordAnnotation, SourceRecord, error_record
from labelloop.kinds import kind_entry
from labelloop.labelstudio.convert import results_to_shapes
from labelloop.labelstudio.export import image_reference, task_annotations
from labelloop.labelstudio.remote import LabelStudioSource, RemoteProject
from labelloop.projects import get_project, label_names

OVERLAP_S = 300.0
COUNTING = ("active", "skipped")  # states a deletion upstream still has to end


@dataclass
class SyncReport:
    ls_url: str
    ls_project: int
    ls_title: str = ""
    source: str = ""
    full: bool = False
    since: str | None = None  # lower bound asked for (cursor - overlap); None = everything
    cursor: str | None = None  # newest task updated_at after this sync
    tasks_fetched: int = 0  # tasks Label Studio returned
    tasks_unchanged: int = 0  # fetched again inside the overlap window, skipped
    changed_task_ids: list[int] = field(default_factory=list)  # fed to ingest
    annotations_deleted: int = 0
    tasks_deleted: int = 0
    listed_all_tasks: bool = False  # the task count differed: every id was listed
    images_downloaded: int = 0
    images_from_store: int = 0  # known task, same image URL: read from the blob store
    ingest: IngestReport = field(default_factory=IngestReport)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync_key(url: str, ls_project: int) -> str:
    return f"labelstudio {url.rstrip('/')} project {ls_project}"


def default_source(url: str, ls_project: int) -> str:
    """The project's address in the Label Studio UI: stable, and unique per server."""
    return f"labelstudio:{url.rstrip('/')}/projects/{ls_project}"


def sync_labelstudio(
    ctx: Context,
    project_name: str,
    url: str,
    ls_project: int,
    *,
    token: str | None = None,
    label_map: dict[str, str] | None = None,
    skip_invalid: bool = False,
    full: bool = False,
    source: str | None = None,
    overlap_s: float = OVERLAP_S,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> SyncReport:
    """Pull what changed in Label Studio project `ls_project` into `project_name`.

    One transaction: annotations, deletions and the cursor are written together or not
    at all. `full` ignores the cursor (after fixing a label map, say)."""
    label_map = label_map or {}
    if token is None:
        token = ctx.settings.labelstudio_token.get_secret_value()
    remote = LabelStudioSource(
        url or ctx.settings.labelstudio_url, token, image_hosts=ctx.settings.labelstudio_image_hosts
    )
    try:
        rp = remote.project(ls_project)
        src = source or default_source(remote.url, rp.id)
        key = sync_key(remote.url, rp.id)
        report = SyncReport(remote.url, rp.id, rp.title, src, full)
        report.ingest.format = "labelstudio-api"
        with ctx.db.session() as s:
            project = get_project(s, project_name)
            _check_classes(rp, project, label_map, remote.url)
            saved = dict((project.settings or {}).get("sync", {}).get(key) or {})
            cursor = None if full else saved.get("updated_at")
            seen = {} if full else dict(saved.get("seen") or {})
            since = _parse(cursor) - timedelta(seconds=overlap_s) if cursor else None
            report.since = since.isoformat() if since else None
            pull = _Pull(s, ctx, remote, rp, project, src, seen, report)
            ingest_records(
                s,
                ctx.blobs,
                project,
                pull.records(since, on_progress),
                skip_invalid=skip_invalid,
                label_map=label_map,
                max_pixels=ctx.settings.max_image_pixels,
                report=report.ingest,
                # The source names this server's project: a task whose image changed
                # was edited there, not claimed by another source.
                allow_edit=True,
            )
            report.annotations_deleted = mark_deleted(s, project.id, src, pull.present)
            before = set(saved.get("deleted_tasks") or [])
            deleted = _drop_deleted_tasks(s, remote, project.id, src, report, before)
            times = [t for t in (cursor, *pull.times.values()) if t]
            report.cursor = max(times, key=_parse) if times else None
            _save_state(project, key, report.cursor, {**seen, **pull.times}, deleted, overlap_s)
        return report
    finally:
        remote.close()


def mark_deleted(s: Session, project_id: int, source: str, present: dict[str, set[str]]) -> int:
    """End the annotations of the given tasks that Label Studio no longer has.

    `present` maps a task's external id to the annotation ids it has now; every counting
    revision of any other annotation of that task becomes state "deleted"."""
    changed = 0
    tasks = list(present)
    for i in range(0, len(tasks), 500):
        rows = s.execute(
            select(Annotation, SourceItem.external_id)
            .join(SourceItem, Annotation.source_item_id == SourceItem.id)
            .where(
                Annotation.project_id == project_id,
                Annotation.source == source,
                Annotation.state.in_(COUNTING),
                SourceItem.external_id.in_(tasks[i : i + 500]),
            )
        ).all()
        for ann, task_id in rows:
            if ann.external_id.removeprefix(f"{task_id}/") not in present[task_id]:
                ann.state = "deleted"
                changed += 1
    s.flush()
    return changed


def _drop_deleted_tasks(
    s: Session,
    remote: LabelStudioSource,
    project_id: int,
    source: str,
    report: SyncReport,
    deleted_before: set[str],
) -> set[str]:
    """Tasks deleted upstream never show up as updated. One request compares the task
    count with the tasks we know (less those already found deleted); only a difference
    pays for listing every task id. Returns the ids of all tasks known to be deleted."""
    known = s.scalar(
        select(func.count(SourceItem.id)).where(
            SourceItem.project_id == project_id, SourceItem.source == source
        )
    )
    if not known or remote.task_count(report.ls_project) == known - len(deleted_before):
        return deleted_before
    report.listed_all_tasks = True
    alive = {str(i) for i in remote.task_ids(report.ls_project)}
    items = s.scalars(
        select(SourceItem.external_id).where(
            SourceItem.project_id == project_id, SourceItem.source == source
        )
    )
    gone = {ext for ext in items if ext not in alive}
    report.tasks_deleted = len(gone - deleted_before)
    report.annotations_deleted += mark_deleted(s, project_id, source, {g: set() for g in gone})
    return gone


class _Pull:
    """Turns the tasks Label Studio returns into source records, and remembers what it saw."""

    def __init__(
        self,
        s: Session,
        ctx: Context,
        remote: LabelStudioSource,
        rp: RemoteProject,
        project: Project,
        source: str,
        seen: dict[str, str],
        report: SyncReport,
    ):
        self.s, self.ctx, self.remote, self.rp = s, ctx, remote, rp
        self.project_id, self.source, self.seen, self.report = project.id, source, seen, report
        self.task = project.task
        self.file = f"Label Studio {remote.url} project {rp.id}"
        self.present: dict[str, set[str]] = {}
        self.times: dict[str, str] = {}  # task id -> updated_at of every task fetched
        self._users: dict[int, str] | None = None

    def records(
        self, since: datetime | None, on_progress: Callable[[int, int | None], None] | None
    ) -> Iterator[SourceRecord]:
        total: list[int] = []
        tasks = self.remote.tasks_updated_since(self.rp.id, since, on_total=total.append)
        for task in tasks:
            tid, updated = str(task["id"]), str(task.get("updated_at") or "")
            self.report.tasks_fetched += 1
            if on_progress:
                on_progress(self.report.tasks_fetched, total[0] if total else None)
            if updated:
                self.times[tid] = updated
            if updated and self.seen.get(tid) == updated:
                self.report.tasks_unchanged += 1
                continue
            self.report.changed_task_ids.append(int(task["id"]))
            anns = task.get("annotations") or []
            self.present[tid] = {str(a.get("id")) for a in anns if isinstance(a, dict)}
            yield self._record(task, tid)

    def _record(self, task: dict, tid: str) -> SourceRecord:
        name = f"task {tid}"
        unlabeled: list[str] = []  # regions left out, said in the sync's warnings
        try:
            ref = image_reference(task, self.rp.image_key)
            anns = [
                RecordAnnotation(
                    external_id=str(ann.annotation_id),
                    shapes=trainable_shapes(
                        results_to_shapes(
                            ann.results, file=self.file, record=ann.record, unlabeled=unlabeled
                        ),
                        self.task,
                        file=self.file,
                        record=ann.record,
                        cancelled=ann.cancelled,
                    ),
                    annotator=self._annotator(ann.completed_by),
                    ground_truth=ann.ground_truth,
                    updated_at=ann.updated_at,
                    cancelled=ann.cancelled,
                )
                for ann in task_annotations(task, include_cancelled=True)
            ]
        except InputError as exc:
            return error_record(exc, source=self.source, external_id=tid, file=self.file, name=name)
        return SourceRecord(
            source=self.source,
            external_id=tid,
            uri=ref,
            file=self.file,
            load=lambda: self._image(tid, ref, name),
            annotations=anns,
            meta={"ls_project": self.rp.id, "ls_task": int(task["id"])},
            name=name,
            warnings=[f"{self.file} {note}" for note in unlabeled],
        )

    def _image(self, tid: str, ref: str, name: str) -> bytes:
        """A known task with the same image URL is read from the blob store: bytes cross
        the network once per task, not once per edit."""
        key = self.s.scalar(
            select(Image.blob_key)
            .join(SourceItem, SourceItem.image_id == Image.id)
            .where(
                SourceItem.project_id == self.project_id,
                SourceItem.source == self.source,
                SourceItem.external_id == tid,
                SourceItem.uri == ref,
            )
        )
        if key is not None and self.ctx.blobs.exists(key):
            self.report.images_from_store += 1
            return self.ctx.blobs.get_bytes(key)
        data = self.remote.image_bytes(ref, file=self.file, record=name)
        self.report.images_downloaded += 1
        return data

    def _annotator(self, who: Any) -> str | None:
        if isinstance(who, dict):  # exports write the user object
            return str(who.get("email") or who.get("id") or "") or None
        if who is None:
            return None
        if self._users is None:
            self._users = self.remote.users()
        return self._users.get(who, str(who)) if isinstance(who, int) else str(who)


def trainable_shapes(
    shapes: list[Shape], task: str, *, file: str, record: str, cancelled: bool = False
) -> list[Shape]:
    """The annotation's shapes, refused (InputError) when some are of a kind the project's
    model cannot learn from, e.g. a rectangle in a segmentation project: dropping them
    silently would train on an image whose cells look unannotated."""
    entry = kind_entry(task)
    wrong = [s for s in shapes if s.kind not in entry.trainable_kinds]
    if not wrong or cancelled:
        return shapes
    kinds = sorted({s.kind for s in wrong})
    labels = sorted({s.label for s in wrong})
    raise InputError(
        f"{len(wrong)} {'/'.join(kinds)} shape(s) ({', '.join(labels)}) cannot train a "
        f"{task} model, which learns from {', '.join(sorted(entry.trainable_kinds))} shapes; "
        f"redraw them with the {' or '.join(entry.label_kinds)} tool in Label Studio (or "
        "sync with --skip-invalid to leave the task out)",
        file=file,
        record=record,
    )


def _check_classes(
    rp: RemoteProject, project: Project, label_map: dict[str, str], url: str
) -> None:
    """Every class the labeling config offers must land on a project label, so a
    mismatch is reported before anything is pulled, not at the first annotation using it."""
    allowed = set(label_names(project))
    unknown = [lab for lab in rp.config.labels if label_map.get(lab, lab) not in allowed]
    if unknown:
        raise InputError(
            f"Label Studio project {rp.id} ({url}) has classes that are not in project "
            f"{project.name!r}: {', '.join(unknown)} (project labels: "
            f"{', '.join(label_names(project))}); map them with --label-map "
            f"'{unknown[0]}=<label>'"
        )


def _save_state(
    project: Project,
    key: str,
    cursor: str | None,
    seen: dict[str, str],
    deleted: set[str],
    overlap_s: float,
) -> None:
    if cursor is not None:
        floor = _parse(cursor) - timedelta(seconds=overlap_s)
        seen = {k: v for k, v in seen.items() if _parse(v) > floor}
    settings = dict(project.settings or {})
    sync = dict(settings.get("sync") or {})
    sync[key] = {
        "updated_at": cursor,
        "seen": seen,
        "deleted_tasks": sorted(deleted, key=lambda t: (len(t), t)),
        "synced_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    settings["sync"] = sync
    project.settings = settings  # a new object, so the JSON column is written


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
