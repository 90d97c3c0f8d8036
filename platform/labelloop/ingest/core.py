"""Writing source records into the database: one transaction, idempotent upserts.

Images are keyed by content hash, source items by (project, source, external id) and
annotations by (project, source, external id, revision), where the revision is a hash of
the annotation's content. Ingesting the same export twice therefore writes nothing the
second time, and an edited annotation becomes a new revision that supersedes the old.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlparse

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labelloop.db.models import Annotation, Image, Project, SourceItem
from labelloop.domain import Box, Keypoint, Mask, Polygon, Shape, shapes_to_json
from labelloop.errors import InputError
from labelloop.imaging import decode_image
from labelloop.ingest.records import RecordAnnotation, SourceRecord
from labelloop.projects import label_names
from labelloop.storage import BlobStore, sha256_bytes


@dataclass
class Skipped:
    file: str
    record: str
    reason: str


@dataclass
class IngestReport:
    format: str = ""
    records: int = 0
    images_new: int = 0
    images_existing: int = 0
    duplicate_images: int = 0
    annotations_new: int = 0
    annotations_unchanged: int = 0
    annotations_restored: int = 0
    annotations_cancelled: int = 0
    unlabeled: int = 0
    shapes_per_class: dict[str, int] = field(default_factory=dict)
    shapes_per_kind: dict[str, int] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def revision_of(ann: RecordAnnotation) -> str:
    payload = {"shapes": shapes_to_json(ann.shapes), "gt": ann.ground_truth, "x": ann.cancelled}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _map_labels(
    shapes: list[Shape],
    allowed: set[str],
    label_map: dict[str, str],
    project: str,
    where: str,
    file: str,
) -> list[Shape]:
    out = []
    for shape in shapes:
        name = label_map.get(shape.label, shape.label)
        if name not in allowed:
            raise InputError(
                f"label {shape.label!r} is not in project {project!r} "
                f"(labels: {', '.join(sorted(allowed))}); map it with --label-map "
                f"'{shape.label}=<label>'",
                file=file,
                record=where,
            )
        out.append(shape if name == shape.label else shape.model_copy(update={"label": name}))
    return out


def _fit_geometry(
    shapes: list[Shape], width: int, height: int, file: str, where: str, warnings: list[str]
) -> list[Shape]:
    """Clip shapes that stick out of the image (with a warning); refuse shapes that have no
    area left or lie wholly outside, and masks drawn for another image size."""
    out: list[Shape] = []
    for shape in shapes:
        if isinstance(shape, Mask) and tuple(shape.size) != (height, width):
            raise InputError(
                f"{shape.label} mask is {shape.size[1]}x{shape.size[0]} but the image is "
                f"{width}x{height}",
                file=file,
                record=where,
            )
        if isinstance(shape, Box) and shape.rotation == 0:
            x0, y0 = max(shape.x, 0.0), max(shape.y, 0.0)
            x1, y1 = min(shape.x + shape.w, width), min(shape.y + shape.h, height)
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                why = "has zero size" if shape.w <= 0 or shape.h <= 0 else "lies outside the image"
                raise InputError(f"{shape.label} box {why}", file=file, record=where)
            if (x0, y0, x1, y1) != (shape.x, shape.y, shape.x + shape.w, shape.y + shape.h):
                warnings.append(f"{file} {where}: {shape.label} box clipped to the image")
                shape = shape.model_copy(update={"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0})
        elif isinstance(shape, Polygon):
            pts = [(min(max(x, 0.0), width), min(max(y, 0.0), height)) for x, y in shape.points]
            if len(set(pts)) < 3 or _area(pts) <= 0:
                raise InputError(
                    f"{shape.label} polygon has no area inside the image", file=file, record=where
                )
            if pts != [tuple(p) for p in shape.points]:
                warnings.append(f"{file} {where}: {shape.label} polygon clipped to the image")
                shape = shape.model_copy(update={"points": pts})
        elif isinstance(shape, Keypoint) and not (0 <= shape.x <= width and 0 <= shape.y <= height):
            raise InputError(f"{shape.label} point lies outside the image", file=file, record=where)
        out.append(shape)
    return out


def _area(pts: list[tuple[float, float]]) -> float:
    return (
        abs(
            sum(
                x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True)
            )
        )
        / 2
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}


def _image_suffix(uri: str) -> str:
    """The blob key's suffix from the reference's path part (`.img` when unknown), never
    anything with a separator in it."""
    suffix = PurePosixPath(urlparse(uri).path).suffix.lower()
    return suffix if suffix in IMAGE_SUFFIXES else ".img"


class _Writer:
    def __init__(
        self,
        s: Session,
        blobs: BlobStore,
        project: Project,
        max_pixels: int,
        label_map: dict[str, str],
        report: IngestReport,
    ):
        self.s, self.blobs, self.project = s, blobs, project
        self.max_pixels, self.label_map, self.report = max_pixels, label_map, report
        self.allowed = set(label_names(project))
        self.seen_sha: set[str] = set()

    def image(self, rec: SourceRecord) -> Image:
        data = rec.load()
        digest = sha256_bytes(data)
        img = self.s.scalar(select(Image).where(Image.sha256 == digest))
        if digest in self.seen_sha:
            self.report.duplicate_images += 1
        self.seen_sha.add(digest)
        if img is not None:
            self.report.images_existing += 1
            return img
        arr = decode_image(
            data,
            name=rec.file if rec.file == rec.uri else f"{rec.file}: {rec.uri}",
            max_pixels=self.max_pixels,
        )
        suffix = _image_suffix(rec.uri)
        key, _ = self.blobs.put_bytes(data, prefix="images", suffix=suffix)
        img = Image(
            sha256=digest,
            blob_key=key,
            width=int(arr.shape[1]),
            height=int(arr.shape[0]),
            format=suffix.lstrip("."),
        )
        self.s.add(img)
        self.s.flush()
        self.report.images_new += 1
        return img

    def record(self, rec: SourceRecord) -> None:
        if rec.error is not None:
            raise rec.error
        img = self.image(rec)
        item = self.s.scalar(
            select(SourceItem).where(
                SourceItem.project_id == self.project.id,
                SourceItem.source == rec.source,
                SourceItem.external_id == rec.external_id,
            )
        )
        if item is None:
            item = SourceItem(
                project_id=self.project.id,
                image_id=img.id,
                source=rec.source,
                external_id=rec.external_id,
                uri=rec.uri,
                meta=rec.meta,
            )
            self.s.add(item)
            self.s.flush()
        elif item.image_id != img.id:  # the task's image was replaced upstream
            item.image_id, item.uri = img.id, rec.uri
        if "split" in rec.meta and (item.meta or {}).get("split") != rec.meta["split"]:
            item.meta = {**(item.meta or {}), "split": rec.meta["split"]}  # re-pinned
        if not rec.annotations:
            self.report.unlabeled += 1
        for ann in rec.annotations:
            self.annotation(rec, item, img, ann)

    def annotation(
        self, rec: SourceRecord, item: SourceItem, img: Image, ann: RecordAnnotation
    ) -> None:
        where = f"{rec.name} / annotation {ann.external_id}"
        shapes = _map_labels(
            ann.shapes, self.allowed, self.label_map, self.project.name, where, rec.file
        )
        shapes = _fit_geometry(shapes, img.width, img.height, rec.file, where, self.report.warnings)
        ann = RecordAnnotation(**{**ann.__dict__, "shapes": shapes})
        ext = f"{rec.external_id}/{ann.external_id}"
        rev = revision_of(ann)
        if ann.cancelled:
            self.report.annotations_cancelled += 1
        else:
            for shape in shapes:
                self.report.shapes_per_class[shape.label] = (
                    self.report.shapes_per_class.get(shape.label, 0) + 1
                )
                self.report.shapes_per_kind[shape.kind] = (
                    self.report.shapes_per_kind.get(shape.kind, 0) + 1
                )
        state = "skipped" if ann.cancelled else "active"
        key = (
            Annotation.project_id == self.project.id,
            Annotation.source == rec.source,
            Annotation.external_id == ext,
        )
        existing = self.s.scalar(select(Annotation).where(*key, Annotation.revision == rev))
        if existing is not None and existing.state == state:
            # The task's image may have been replaced upstream with the labels unchanged:
            # the labels follow the task to its new pixels.
            existing.image_id, existing.source_item_id = img.id, item.id
            self.report.annotations_unchanged += 1
            return
        # Whatever counted for this key until now stops counting: a new revision, or an
        # earlier one coming back (edited A -> B -> A, or cancelled and resubmitted).
        self.s.execute(
            update(Annotation)
            .where(*key, Annotation.state.in_(("active", "skipped")))
            .where(Annotation.id != (existing.id if existing is not None else -1))
            .values(state="superseded")
        )
        if existing is not None:
            existing.state = state
            self.report.annotations_restored += 1
            return
        self.s.add(
            Annotation(
                project_id=self.project.id,
                source_item_id=item.id,
                image_id=img.id,
                source=rec.source,
                external_id=ext,
                revision=rev,
                annotator=ann.annotator,
                is_ground_truth=ann.ground_truth,
                state=state,
                shapes=shapes_to_json(shapes),
                source_updated_at=ann.updated_at,
            )
        )
        self.report.annotations_new += 1


def ingest_records(
    s: Session,
    blobs: BlobStore,
    project: Project,
    records: Iterable[SourceRecord],
    *,
    skip_invalid: bool = False,
    label_map: dict[str, str] | None = None,
    max_pixels: int = 100_000_000,
    report: IngestReport | None = None,
    on_record: Callable[[int], None] | None = None,
) -> IngestReport:
    """Write records inside the caller's transaction.

    Without `skip_invalid` the first bad record raises InputError and the caller's
    rollback leaves the database untouched. With it, each record runs in a savepoint and
    a bad one is rolled back alone and reported."""
    report = report or IngestReport()
    writer = _Writer(s, blobs, project, max_pixels, label_map or {}, report)
    records_iter = iter(records)
    while True:
        try:
            rec = next(records_iter)
        except StopIteration:
            break
        except InputError as exc:  # the reader's stream itself is damaged: it cannot go on
            if not skip_invalid:
                raise
            report.skipped.append(Skipped(exc.file or "", exc.record or "", exc.reason))
            report.warnings.append(
                f"{exc.file or 'input'}: reading stopped at {exc.record or 'this point'}; "
                "records after it were not read"
            )
            break
        report.records += 1
        if skip_invalid:
            # The counters must describe what was written: undo them with the savepoint.
            saved = (copy.deepcopy(vars(report)), set(writer.seen_sha))
            sp = s.begin_nested()
            try:
                writer.record(rec)
                sp.commit()
                report.warnings.extend(rec.warnings)
            except InputError as exc:
                sp.rollback()
                state, writer.seen_sha = saved
                state["records"] = report.records
                vars(report).update(state)
                report.skipped.append(
                    Skipped(exc.file or rec.file, exc.record or rec.name, exc.reason)
                )
        else:
            writer.record(rec)
            report.warnings.extend(rec.warnings)
        if on_record:
            on_record(report.records)
    report.shapes_per_class = dict(Counter(report.shapes_per_class).most_common())
    return report
