"""Writing source records into the database: one transaction, idempotent upserts.

Images are keyed by content hash, source items by (project, source, external id) and
annotations by (project, source, external id, revision), where the revision is a hash of
the annotation's content. Ingesting the same export twice therefore writes nothing the
second time, and an edited annotation becomes a new revision that supersedes the old.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import Text, bindparam, cast, insert, select
from sqlalchemy.orm import Session

from labelloop.db.models import Annotation, Image, Project, SourceItem
from labelloop.db.upsert import get_or_insert, get_or_insert_many
from labelloop.domain import Box, Ellipse, Keypoint, Mask, Polygon, Shape, Tag, shapes_json_text
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
    dry_run: bool = False
    # Per file (filled when asked, e.g. by a dry run): records, images, unlabeled,
    # shapes_per_kind, shapes_per_class, skipped.
    files: dict[str, dict] = field(default_factory=dict)

    def count_file(self, rec: SourceRecord, label_map: dict[str, str], ok: bool) -> None:
        """What one record added to its file's summary (kept or skipped)."""
        per = self.files.setdefault(
            rec.file,
            {
                "records": 0,
                "images": 0,
                "unlabeled": 0,
                "shapes_per_kind": {},
                "shapes_per_class": {},
                "skipped": 0,
            },
        )
        per["records"] += 1
        if not ok:
            per["skipped"] += 1
            return
        per["images"] += 1
        live = [a for a in rec.annotations if not a.cancelled]
        per["unlabeled"] += not rec.annotations
        for ann in live:
            for shape in ann.shapes:
                kinds, labels = per["shapes_per_kind"], per["shapes_per_class"]
                kinds[shape.kind] = kinds.get(shape.kind, 0) + 1
                label = label_map.get(shape.label, shape.label)
                labels[label] = labels.get(label, 0) + 1

    def to_dict(self) -> dict:
        return asdict(self)


def revision_of(ann: RecordAnnotation) -> str:
    return _revision(ann, shapes_json_text(ann.shapes))


def _revision(ann: RecordAnnotation, text: str) -> str:
    """The revision hash of an annotation whose shapes dump to `text` (which the ingest
    stores): the hashed payload is built around that text. Its bytes are those of
    `{"gt": .., "shapes": .., "x": ..}` dumped with sorted keys, as revisions have always
    been hashed, so a re-ingest finds the revisions it wrote before."""
    gt, cancelled = json.dumps(ann.ground_truth), json.dumps(ann.cancelled)
    blob = f'{{"gt":{gt},"shapes":{text},"x":{cancelled}}}'.encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass
class _NewAnnotation:
    """An annotation row of this batch, not written yet: a batch's rows go in one
    executemany INSERT (`_Writer.write_annotations`), where ORM objects cost a flush that
    took most of the writing time. Fields are the `annotation` table's columns."""

    project_id: int
    source_item_id: int
    image_id: int
    source: str
    external_id: str
    revision: str
    annotator: str | None
    is_ground_truth: bool
    state: str
    shapes: str  # the JSON text the revision was hashed from
    source_updated_at: str | None


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
    area left (boxes, polygons, ellipses of zero radius) or lie wholly outside, and masks
    drawn for another image size."""
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
            pts = shape.points
            xs, ys = zip(*pts, strict=True) if pts else ((0.0,), (0.0,))
            inside = min(xs) >= 0 and min(ys) >= 0 and max(xs) <= width and max(ys) <= height
            if not inside:  # a polygon inside the image keeps its points as they are
                pts = [(min(max(x, 0.0), width), min(max(y, 0.0), height)) for x, y in pts]
            if len(set(map(tuple, pts))) < 3 or _area(pts) <= 0:
                raise InputError(
                    f"{shape.label} polygon has no area inside the image", file=file, record=where
                )
            if not inside and pts != [tuple(p) for p in shape.points]:
                warnings.append(f"{file} {where}: {shape.label} polygon clipped to the image")
                shape = shape.model_copy(update={"points": pts})
        elif isinstance(shape, Keypoint) and not (0 <= shape.x <= width and 0 <= shape.y <= height):
            raise InputError(f"{shape.label} point lies outside the image", file=file, record=where)
        elif isinstance(shape, Ellipse) and (shape.rx <= 0 or shape.ry <= 0):
            # A cell of no extent, as a zero-size box is: refused for every format alike.
            raise InputError(f"{shape.label} ellipse has a zero radius", file=file, record=where)
        out.append(shape)
    return out


def _warn_repeats(shapes: list[Shape], file: str, where: str, warnings: list[str]) -> None:
    """Shapes that repeat another exactly as the source gives them (before label mapping
    and clipping, which can make different shapes equal) are kept, each counting as an
    object, with a warning: an export that wrote a cell twice would otherwise pass for a
    crowded field."""
    seen: set[tuple] = set()
    repeats: dict[tuple[str, str], int] = {}
    for shape in shapes:
        key = _geometry_key(shape)
        if key is not None:
            if key in seen:
                repeats[shape.label, shape.kind] = repeats.get((shape.label, shape.kind), 0) + 1
            seen.add(key)
    for (label, kind), n in repeats.items():
        warnings.append(
            f"{file} {where}: {label} {kind}: {n} exact repeat{'s' if n > 1 else ''} of "
            "another (same label and geometry); kept, each counting as an object: if the "
            "export wrote them twice, remove the repeats at the source"
        )


def _geometry_key(shape: Shape) -> tuple | None:
    """Label and geometry, attributes left out (an export's duplicate carries its own id);
    None for tags, which name the image rather than an object in it."""
    if isinstance(shape, Box):
        return ("box", shape.label, shape.x, shape.y, shape.w, shape.h, shape.rotation)
    if isinstance(shape, Polygon):
        return ("polygon", shape.label, tuple(shape.points))
    if isinstance(shape, Mask):
        return ("mask", shape.label, shape.counts)
    if isinstance(shape, Keypoint):
        return ("keypoint", shape.label, shape.x, shape.y)
    if isinstance(shape, Ellipse):
        return ("ellipse", shape.label, shape.x, shape.y, shape.rx, shape.ry, shape.rotation)
    return None


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
        allow_edit: bool = False,
    ):
        self.s, self.blobs, self.project = s, blobs, project
        self.max_pixels, self.label_map, self.report = max_pixels, label_map, report
        self.allow_edit = allow_edit
        self.allowed = set(label_names(project))
        self.seen_sha: dict[str, str] = {}  # content hash -> the first record with it
        # (file, source, external id) -> the record that had it: an id twice in one file
        # would make two records one source item (the second's image and labels overwrite
        # the first's). Records of different files may share an id: they describe the
        # same image (COCO instances + person_keypoints) and merge.
        self.seen_ids: dict[tuple[str, str, str], str] = {}
        self.created_blobs: list[str] = []
        # Rows looked up per batch of records (`prefetch`), not one SELECT per record and
        # per annotation (a large ingest spent most of its time there). A key that is
        # cached but None / [] is known to be absent; a key not cached is looked up.
        self.images: dict[str, Image] = {}
        self.items: dict[tuple[str, str], SourceItem | None] = {}
        self.anns: dict[tuple[str, str], list[Annotation | _NewAnnotation]] = {}
        self.new_annotations: list[_NewAnnotation] = []  # written by `write_annotations`
        # id(record) -> (record, its image), filled by `prepare`
        self.record_images: dict[int, tuple[SourceRecord, Image]] = {}

    def forget(self) -> None:
        """Drop the cached rows: a rolled-back savepoint may have taken some with it."""
        self.images, self.items, self.anns, self.record_images = {}, {}, {}, {}
        self.new_annotations = []

    def write_annotations(self) -> None:
        """Insert the annotation rows added since the last call, in one statement. Their
        ids are not read back: their keys leave the cache, so whatever next needs one of
        them (a later record with the same key) selects it as a row of the session."""
        if self.new_annotations:
            stmt = _annotation_insert(self.s.get_bind().dialect.name)
            self.s.connection().execute(stmt, [vars(a) for a in self.new_annotations])
            for ann in self.new_annotations:
                self.anns.pop((ann.source, ann.external_id), None)
            self.new_annotations = []

    def prefetch(self, records: list[SourceRecord]) -> None:
        """Source items and annotations of a batch of records, in a few queries. The
        previous batch is written and its rows let go first, so memory holds one batch."""
        self.write_annotations()
        self.s.flush()
        self.forget()
        items: dict[str, set[str]] = {}
        anns: dict[str, set[str]] = {}
        for rec in records:
            if rec.error is not None:
                continue
            items.setdefault(rec.source, set()).add(rec.external_id)
            ids = anns.setdefault(rec.source, set())
            ids.update(f"{rec.external_id}/{a.external_id}" for a in rec.annotations)
            ids.add(f"{rec.external_id}/flags")
        pid = self.project.id
        for source, ids in items.items():
            for chunk in _chunks(sorted(ids)):
                for item in self.s.scalars(
                    select(SourceItem).where(
                        SourceItem.project_id == pid,
                        SourceItem.source == source,
                        SourceItem.external_id.in_(chunk),
                    )
                ):
                    self.items[(source, item.external_id)] = item
                for ext in chunk:
                    self.items.setdefault((source, ext), None)
        for source, ids in anns.items():
            for chunk in _chunks(sorted(ids)):
                for ext in chunk:
                    self.anns[(source, ext)] = []
                for ann in self.s.scalars(
                    select(Annotation)
                    .where(
                        Annotation.project_id == pid,
                        Annotation.source == source,
                        Annotation.external_id.in_(chunk),
                    )
                    .order_by(Annotation.id)
                ):
                    self.anns[(source, ann.external_id)].append(ann)

    def _item(self, source: str, external_id: str) -> SourceItem | None:
        key = (source, external_id)
        if key not in self.items:
            self.items[key] = self.s.scalar(
                select(SourceItem).where(
                    SourceItem.project_id == self.project.id,
                    SourceItem.source == source,
                    SourceItem.external_id == external_id,
                )
            )
        return self.items[key]

    def _annotations(self, source: str, external_id: str) -> list[Annotation | _NewAnnotation]:
        """Every revision of one annotation key, oldest first (cached, then kept current
        as this ingest adds revisions)."""
        key = (source, external_id)
        if key not in self.anns:
            self.anns[key] = list(
                self.s.scalars(
                    select(Annotation)
                    .where(
                        Annotation.project_id == self.project.id,
                        Annotation.source == source,
                        Annotation.external_id == external_id,
                    )
                    .order_by(Annotation.id)
                )
            )
        return self.anns[key]

    def image(self, rec: SourceRecord) -> Image:
        data = rec.load()
        digest = sha256_bytes(data)
        img = self.images.get(digest)
        if img is None:
            with self.s.no_autoflush:  # images added by this ingest are in self.images
                img = self.s.scalar(select(Image).where(Image.sha256 == digest))
        if digest in self.seen_sha:
            self.report.duplicate_images += 1
            self.report.warnings.append(
                f"{rec.file} {rec.name}: same pixels as {self.seen_sha[digest]}: both "
                "records label one image"
            )
        self.seen_sha.setdefault(digest, f"{rec.file} {rec.name}")
        if img is not None:
            self.images[digest] = img
            self.report.images_existing += 1
            return img
        try:
            name = rec.file if rec.file == rec.uri else f"{rec.file}: {rec.uri}"
            arr = decode_image(
                data, name=name, max_pixels=self.max_pixels, upright=self._placed(rec)
            )
        except InputError as exc:  # the image's defect, told with the record that uses it
            raise InputError(exc.reason, file=exc.file, record=rec.name) from None
        suffix = _image_suffix(rec.uri)
        key = self.blobs.key_for(digest, "images", suffix)
        if not self.blobs.exists(key):
            self.created_blobs.append(key)  # removed again if the ingest does not keep it
        self.blobs.put_bytes(data, prefix="images", suffix=suffix)
        # Another ingest may be writing the same pixels right now: the insert waits for
        # it and yields to its row instead of failing on the unique hash.
        values = {
            "sha256": digest,
            "blob_key": key,
            "width": int(arr.shape[1]),
            "height": int(arr.shape[0]),
            "format": suffix.lstrip("."),
        }
        img, created = get_or_insert(self.s, Image, values, ["sha256"])
        if created:
            self.report.images_new += 1
        else:
            self.report.images_existing += 1
        self.images[digest] = img
        return img

    def _placed(self, rec: SourceRecord) -> bool:
        """Whether anything on `rec`'s image has a place that a turn would move: its
        shapes other than class tags, or the boxes and outlines a model will draw on a
        pool image (pre-annotations). A class folder's photo has none."""
        if not rec.annotations:
            return self.project.task != "classification"
        return any(not isinstance(sh, Tag) for ann in rec.annotations for sh in ann.shapes)

    def record(self, rec: SourceRecord) -> None:
        if rec.error is not None:
            raise rec.error
        key = (rec.file, rec.source, rec.external_id)
        if key in self.seen_ids:
            raise InputError(
                f"id {rec.external_id!r} appears twice in this file (first as "
                f"{self.seen_ids[key]}); ids must be unique, fix or renumber the export",
                file=rec.file,
                record=rec.name,
            )
        self._write(rec)
        self.seen_ids[key] = rec.name

    def prepare(self, records: list[SourceRecord]) -> None:
        """Outside savepoints (no --skip-invalid): a batch's images first, then its new
        source items in one INSERT, where each took a statement of its own. A record whose
        image fails keeps that as its error, raised when the ingest reaches it."""
        new: dict[tuple[str, str], dict] = {}
        for rec in records:
            if rec.error is not None:
                break  # the ingest stops at this record: what follows is not written
            try:
                img = self.image(rec)
            except InputError as exc:
                rec.error = exc
                break
            self.record_images[id(rec)] = (rec, img)  # the record held: its id stays its own
            key = (rec.source, rec.external_id)
            if self.items.get(key) is None and key not in new:
                new[key] = self._item_values(rec, img)
        rows = get_or_insert_many(self.s, SourceItem, list(new.values()), ITEM_KEYS)
        self.items.update(zip(new, rows, strict=True))

    def _item_values(self, rec: SourceRecord, img: Image) -> dict:
        return {
            "project_id": self.project.id,
            "image_id": img.id,
            "source": rec.source,
            "external_id": rec.external_id,
            "uri": rec.uri,
            "meta": rec.meta,
        }

    def _write(self, rec: SourceRecord) -> None:
        prepared = self.record_images.pop(id(rec), None)
        img = prepared[1] if prepared else self.image(rec)
        if rec.annotations and rec.declared_size and rec.declared_size != (img.width, img.height):
            w, h = rec.declared_size
            raise InputError(
                f"the annotation file gives its image as {w}x{h} but the image is "
                f"{img.width}x{img.height}: its shapes were drawn on an image of another size",
                file=rec.file,
                record=rec.name,
            )
        item = self._item(rec.source, rec.external_id)
        if item is None:
            values = self._item_values(rec, img)
            item, _ = get_or_insert(self.s, SourceItem, values, ITEM_KEYS)
            self.items[(rec.source, rec.external_id)] = item
        if item.image_id != img.id:
            self.claim(rec, item, img)
        if "split" in rec.meta and (item.meta or {}).get("split") != rec.meta["split"]:
            item.meta = {**(item.meta or {}), "split": rec.meta["split"]}  # re-pinned
        annotations = self._flag_tags(rec)
        if not annotations:
            self.report.unlabeled += 1
        for ann in annotations:
            self.annotation(rec, item, img, ann)

    def _flag_tags(self, rec: SourceRecord) -> list[RecordAnnotation]:
        """Image-level flags (LabelMe's `flags`) named like a class of a classification
        project are that image's class: they become Tag shapes, or the image would count
        as labelled with no class."""
        flags = rec.meta.get("flags") if self.project.task == "classification" else None
        classes = [f for f in flags or [] if self.label_map.get(f, f) in self.allowed]
        if not classes:
            return rec.annotations
        out = []
        for ann in rec.annotations or [RecordAnnotation(external_id="flags", shapes=[])]:
            have = {sh.label for sh in ann.shapes if isinstance(sh, Tag)}
            tags = [Tag(label=f) for f in classes if f not in have]
            out.append(RecordAnnotation(**{**ann.__dict__, "shapes": [*ann.shapes, *tags]}))
        return out

    def claim(self, rec: SourceRecord, item: SourceItem, img: Image) -> None:
        """The same (source, external id) with other pixels: either the image was replaced
        upstream (an edit the user vouches for), or two different sources share a name and
        their ids overlap. Taking the second silently would move the first's labels onto
        the wrong images, so without `allow_edit` it is refused, naming both."""
        if not self.allow_edit:
            old = self.s.get(Image, item.image_id)
            raise InputError(
                f"source {rec.source!r} already has {rec.name} with image {item.uri} "
                f"(sha256 {old.sha256[:12] if old else '?'}), but this input gives it "
                f"image {rec.uri} (sha256 {img.sha256[:12]}); if this is another source "
                "(another Label Studio instance or export), name it with --source NAME; "
                "if the image was replaced on purpose, pass --edit",
                file=rec.file,
                record=rec.name,
            )
        item.image_id, item.uri = img.id, rec.uri

    def annotation(
        self, rec: SourceRecord, item: SourceItem, img: Image, ann: RecordAnnotation
    ) -> None:
        where = f"{rec.name} / annotation {ann.external_id}"
        _warn_repeats(ann.shapes, rec.file, where, self.report.warnings)
        shapes = _map_labels(
            ann.shapes, self.allowed, self.label_map, self.project.name, where, rec.file
        )
        shapes = _fit_geometry(shapes, img.width, img.height, rec.file, where, self.report.warnings)
        ann = RecordAnnotation(**{**ann.__dict__, "shapes": shapes})
        ext = f"{rec.external_id}/{ann.external_id}"
        shapes_text = shapes_json_text(shapes)
        rev = _revision(ann, shapes_text)
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
        revisions = self._annotations(rec.source, ext)
        existing = next((a for a in revisions if a.revision == rev), None)
        if existing is not None and existing.state == state:
            # The task's image may have been replaced upstream with the labels unchanged:
            # the labels follow the task to its new pixels. (Images and source items are
            # inserted as they are met, so both have their ids.)
            if existing.image_id != img.id:
                existing.image_id = img.id
            if existing.source_item_id != item.id:
                existing.source_item_id = item.id
            self.report.annotations_unchanged += 1
            return
        # Whatever counted for this key until now stops counting: a new revision, or an
        # earlier one coming back (edited A -> B -> A, or cancelled and resubmitted).
        for other in revisions:
            if other is not existing and other.state in ("active", "skipped"):
                other.state = "superseded"
        if existing is not None:
            existing.state = state
            self.report.annotations_restored += 1
            return
        new = _NewAnnotation(
            project_id=self.project.id,
            source_item_id=item.id,
            image_id=img.id,
            source=rec.source,
            external_id=ext,
            revision=rev,
            annotator=ann.annotator,
            is_ground_truth=ann.ground_truth,
            state=state,
            shapes=shapes_text,
            source_updated_at=ann.updated_at,
        )
        self.new_annotations.append(new)
        revisions.append(new)
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
    created_blobs: list[str] | None = None,
    per_file: bool = False,
    allow_edit: bool = False,
) -> IngestReport:
    """Write records inside the caller's transaction.

    Without `skip_invalid` the first bad record raises InputError and the caller's
    rollback leaves the database untouched. With it, each record runs in a savepoint and
    a bad one is rolled back alone and reported. `created_blobs` receives the keys of the
    image blobs this call wrote, so the caller can remove those its transaction did not
    keep (`drop_unreferenced`). `per_file` fills `report.files`. `allow_edit` lets a
    known (source, external id) move to a different image (it was replaced upstream);
    otherwise that is refused as a clash of two sources."""
    report = report or IngestReport()
    writer = _Writer(s, blobs, project, max_pixels, label_map or {}, report, allow_edit)
    if created_blobs is not None:
        writer.created_blobs = created_blobs
    with _collections_per_batch():
        _ingest_batches(s, writer, records, report, skip_invalid, per_file, on_record)
    writer.write_annotations()
    return report


@contextmanager
def _collections_per_batch() -> Iterator[None]:
    """The garbage collector runs once per batch instead of every few hundred allocations.
    Reading and converting a batch allocates many small containers, and the automatic
    collections that triggered took a third of an ingest's CPU time; almost nothing of
    it is cyclic, so one young-generation collection per batch keeps memory as flat."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _ingest_batches(
    s: Session,
    writer: _Writer,
    records: Iterable[SourceRecord],
    report: IngestReport,
    skip_invalid: bool,
    per_file: bool,
    on_record: Callable[[int], None] | None,
) -> IngestReport:
    records_iter = iter(records)
    batch: list[SourceRecord] = []
    stream_error: InputError | None = None
    while True:
        if not batch:
            if stream_error is not None:  # the reader's stream is damaged: it cannot go on
                if not skip_invalid:
                    raise stream_error
                exc = stream_error
                report.skipped.append(Skipped(exc.file or "", exc.record or "", exc.reason))
                report.warnings.append(
                    f"{exc.file or 'input'}: reading stopped at {exc.record or 'this point'}; "
                    "records after it were not read"
                )
                break
            gc.collect(1)  # the previous batch's young objects; automatic collection is off
            batch, stream_error = _read_batch(records_iter)
            if not batch:
                if stream_error is not None:
                    continue  # reported above, on the next turn
                break
            writer.prefetch(batch)
            if not skip_invalid:  # with savepoints each record writes its own rows
                writer.prepare(batch)
            batch.reverse()  # popped from the end, in reading order
        rec = batch.pop()
        report.records += 1
        if skip_invalid:
            # The counters must describe what was written: undo them with the savepoint.
            files, report.files = report.files, {}  # per-file counts are kept apart
            saved = (copy.deepcopy(vars(report)), dict(writer.seen_sha))  # seen_ids: on success
            report.files = files
            sp = s.begin_nested()
            try:
                writer.record(rec)
                writer.write_annotations()  # inside the record's savepoint
                sp.commit()
                report.warnings.extend(rec.warnings)
                ok = True
            except InputError as exc:
                sp.rollback()
                writer.forget()
                state, writer.seen_sha = saved
                state["records"], state["files"] = report.records, report.files
                vars(report).update(state)
                report.skipped.append(
                    Skipped(exc.file or rec.file, exc.record or rec.name, exc.reason)
                )
                ok = False
        else:
            writer.record(rec)
            report.warnings.extend(rec.warnings)
            ok = True
        if per_file:
            report.count_file(rec, writer.label_map, ok)
        if on_record:
            on_record(report.records)
    report.shapes_per_class = dict(Counter(report.shapes_per_class).most_common())
    return report


BATCH = 500  # records per prefetch; also the size of each IN (...) list
ITEM_KEYS = ["project_id", "source", "external_id"]


@cache
def _annotation_insert(dialect: str) -> Any:
    """The INSERT of annotation rows, the shapes bound as the JSON text already made
    (the JSON column type would serialise the list a second time)."""
    shapes: Any = bindparam("shapes", type_=Text)
    if dialect == "postgresql":  # SQLite stores JSON as text; PostgreSQL casts it
        shapes = cast(shapes, Annotation.__table__.c.shapes.type)
    return insert(Annotation).values(shapes=shapes)


def _chunks(values: list[str], size: int = BATCH) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _read_batch(
    records: Iterator[SourceRecord], size: int = BATCH
) -> tuple[list[SourceRecord], InputError | None]:
    """Up to `size` records, and the reader's stream error if one ended the stream."""
    out: list[SourceRecord] = []
    try:
        for rec in records:
            out.append(rec)
            if len(out) >= size:
                break
    except InputError as exc:
        return out, exc
    return out, None


def drop_unreferenced(s: Session, blobs: BlobStore, keys: Iterable[str]) -> int:
    """Delete the image blobs among `keys` that no image row references (those written by
    an ingest that failed, or for records it skipped); returns how many went."""
    keys = set(keys)
    if not keys:
        return 0
    used = set(s.scalars(select(Image.blob_key).where(Image.blob_key.in_(keys))))
    for key in keys - used:
        blobs.delete(key)
    return len(keys - used)
