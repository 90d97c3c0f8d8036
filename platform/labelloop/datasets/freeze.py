"""Freeze a dataset version: the labelled images of a project as a content-hashed manifest.

The split is a pure function of (seed, group key), where the group key is the image's
patient/slide id when the source gave one, else its content hash. An image therefore
keeps its split as the dataset grows, so test metrics of successive versions stay
comparable and no patient leaks across splits.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.context import Context
from labelloop.db.models import Annotation, DatasetItem, DatasetVersion, Image, Project, SourceItem
from labelloop.domain import GROUP_KEYS, Split
from labelloop.errors import InputError
from labelloop.projects import get_project, label_names
from labelloop.times import parse_time

MANIFEST_VERSION = 1


def split_for(group: str, seed: int, fractions: tuple[float, float, float]) -> Split:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big") / 2**64
    if h < fractions[0]:
        return Split.train
    if h < fractions[0] + fractions[1]:
        return Split.val
    return Split.test


# Older than any time: an annotation whose update time is unknown or no time.
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ImageLabels:
    """What counts for one image: the chosen annotation's id (the dataset item points at
    it) and the shapes, which join those of every export file that described the image."""

    id: int
    shapes: list
    merged: int = 1  # annotations whose shapes are in `shapes`


def current_annotations(s: Session, project_id: int) -> dict[int, ImageLabels]:
    """The labels that count per image, decided here in one documented place.

    Annotations made by someone (Label Studio annotators: `annotator` set) are
    alternatives: a ground-truth one first, then the latest. Annotations read from export
    files carry no annotator and describe parts of one image (COCO instances and
    person_keypoints, two VOC or LabelMe files of one image, the same pixels under two
    names): when the chosen one is such, the image takes the union of all of them, equal
    shapes once, so no file's boxes vanish."""
    rows = s.scalars(
        select(Annotation)
        .where(Annotation.project_id == project_id, Annotation.state == "active")
        .order_by(Annotation.id)
    ).all()
    per_image: dict[int, list[Annotation]] = {}
    for ann in rows:
        per_image.setdefault(ann.image_id, []).append(ann)
    out: dict[int, ImageLabels] = {}
    for image_id, anns in per_image.items():
        chosen = max(
            anns, key=lambda a: (a.is_ground_truth, parse_time(a.source_updated_at) or _NEVER, a.id)
        )
        if chosen.annotator is not None or len(anns) == 1:
            out[image_id] = ImageLabels(chosen.id, chosen.shapes)
            continue
        parts = [chosen] + [a for a in anns if a is not chosen and a.annotator is None]
        shapes, seen = [], set()
        for ann in parts:
            for shape in ann.shapes:
                key = json.dumps(shape, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    shapes.append(shape)
        out[image_id] = ImageLabels(chosen.id, shapes, len(parts))
    return out


def _group_keys(s: Session, project_id: int) -> dict[int, str]:
    groups: dict[int, str] = {}
    for image_id, meta in s.execute(
        select(SourceItem.image_id, SourceItem.meta)
        .where(SourceItem.project_id == project_id)
        .order_by(SourceItem.id)  # deterministic when one image has several items
    ):
        for k in GROUP_KEYS:
            if meta and meta.get(k):
                groups[image_id] = f"{k}:{meta[k]}"
                break
    return groups


def _pinned_splits(s: Session, project_id: int) -> dict[int, str]:
    """Images whose source pinned a split (`ingest --split`, a dataset's official test
    list): they keep it in every version, whatever the hash says."""
    valid = {sp.value for sp in Split}
    pinned: dict[int, str] = {}
    for image_id, meta in s.execute(
        select(SourceItem.image_id, SourceItem.meta)
        .where(SourceItem.project_id == project_id)
        .order_by(SourceItem.id)
    ):
        if meta and meta.get("split") in valid:
            pinned.setdefault(image_id, meta["split"])
    return pinned


def _ensure_eval_splits(
    items: list[dict],
    groups: dict[int, str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    pinned: set[int] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Small sets can hash no group into val or test; move the lowest-hash train groups
    there so evaluation always has data. Deterministic, and a no-op once a set is large.
    A split whose fraction is 0 is left empty, and pinned images never move."""
    present = Counter(it["split"] for it in items)
    fixed = {groups[i] for i in pinned}
    train_groups = sorted(
        {
            groups[it["image_id"]]
            for it in items
            if it["split"] == "train" and groups[it["image_id"]] not in fixed
        },
        key=lambda g: hashlib.sha256(g.encode()).hexdigest(),
    )
    wanted = {Split.test.value: fractions[2], Split.val.value: fractions[1]}
    for needed in (Split.test.value, Split.val.value):
        if wanted[needed] > 0 and present[needed] == 0 and len(train_groups) > 1:
            g = train_groups.pop(0)
            for it in items:
                if groups[it["image_id"]] == g:
                    it["split"] = needed
                    present[needed] += 1


def build_manifest(
    s: Session, project: Project, seed: int, fractions: tuple[float, float, float]
) -> tuple[dict, dict[int, int]]:
    chosen = current_annotations(s, project.id)
    if not chosen:
        raise InputError(
            f"project {project.name!r} has no labelled images to freeze; ingest annotations first"
        )
    images = {img.id: img for img in s.scalars(select(Image).where(Image.id.in_(chosen)))}
    meta_groups = _group_keys(s, project.id)
    groups = {iid: meta_groups.get(iid, f"sha:{images[iid].sha256}") for iid in chosen}
    pinned = _pinned_splits(s, project.id)
    items = []
    for iid, ann in chosen.items():
        img = images[iid]
        items.append(
            {
                "image_id": iid,
                "sha256": img.sha256,
                "blob_key": img.blob_key,
                "width": img.width,
                "height": img.height,
                "split": pinned.get(iid) or split_for(groups[iid], seed, fractions).value,
                "group": groups[iid],
                "shapes": ann.shapes,
            }
        )
    _ensure_eval_splits(items, groups, fractions, set(pinned) & set(chosen))
    items.sort(key=lambda it: it["sha256"])
    manifest = {
        "version": MANIFEST_VERSION,
        "project": {"name": project.name, "task": project.task},
        "labels": label_names(project),
        "split_seed": seed,
        "items": items,
    }
    return manifest, {iid: ann.id for iid, ann in chosen.items()}


def manifest_hash(manifest: dict) -> str:
    """Hash of everything that changes what a model learns (ids excluded: content only)."""
    content = {
        "labels": manifest["labels"],
        "task": manifest["project"]["task"],
        "seed": manifest["split_seed"],
        "items": [(it["sha256"], it["split"], it["shapes"]) for it in manifest["items"]],
    }
    return hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def manifest_stats(manifest: dict) -> dict:
    splits = Counter(it["split"] for it in manifest["items"])
    shapes: dict[str, dict[str, int]] = {}
    for it in manifest["items"]:
        for sh in it["shapes"]:
            per = shapes.setdefault(it["split"], {})
            per[sh["label"]] = per.get(sh["label"], 0) + 1
    return {"images": len(manifest["items"]), "splits": dict(splits), "shapes": shapes}


@dataclass
class FreezeResult:
    dataset_version_id: int
    number: int
    content_hash: str
    created: bool
    stats: dict


def freeze(ctx: Context, project_name: str, *, seed: int | None = None) -> FreezeResult:
    """Freeze the project's current labels; an unchanged dataset returns the existing version."""
    seed = ctx.settings.split_seed if seed is None else seed
    with ctx.db.session() as s:
        project = get_project(s, project_name)
        manifest, ann_ids = build_manifest(s, project, seed, ctx.settings.split_fractions)
        digest = manifest_hash(manifest)
        existing = s.scalar(
            select(DatasetVersion).where(
                DatasetVersion.project_id == project.id, DatasetVersion.content_hash == digest
            )
        )
        if existing is not None:
            return FreezeResult(existing.id, existing.number, digest, False, existing.stats)
        parent = s.scalar(
            select(DatasetVersion)
            .where(DatasetVersion.project_id == project.id)
            .order_by(DatasetVersion.number.desc())
            .limit(1)
        )
        number = (
            s.scalar(
                select(func.max(DatasetVersion.number)).where(
                    DatasetVersion.project_id == project.id
                )
            )
            or 0
        ) + 1
        manifest["dataset_version"] = number
        key, _ = ctx.blobs.put_bytes(
            json.dumps(manifest, sort_keys=True).encode(), prefix="manifests", suffix=".json"
        )
        stats = manifest_stats(manifest)
        dv = DatasetVersion(
            project_id=project.id,
            number=number,
            content_hash=digest,
            parent_id=parent.id if parent else None,
            split_seed=seed,
            manifest_key=key,
            stats=stats,
        )
        s.add(dv)
        s.flush()
        s.add_all(
            DatasetItem(
                dataset_version_id=dv.id,
                image_id=it["image_id"],
                annotation_id=ann_ids[it["image_id"]],
                split=it["split"],
            )
            for it in manifest["items"]
        )
        return FreezeResult(dv.id, number, digest, True, stats)


def load_manifest(ctx: Context, dataset_version_id: int) -> dict:
    with ctx.db.session() as s:
        dv = s.get(DatasetVersion, dataset_version_id)
        if dv is None:
            raise InputError(f"no dataset version with id {dataset_version_id}")
        key = dv.manifest_key
    return json.loads(ctx.blobs.get_bytes(key))
