"""Counting cells in image files with a model version: counts, intervals, overlays, error
against the annotated objects.

`count_images` runs any model kind (detection boxes, segmentation instances, a classifier's
label) through its `predict`, writes one overlay PNG per image (every counted object's
outline and index, a count legend) plus `counts.csv`, `counts.json` and, when some images
are annotated, `counts.png` (predicted vs true). Each count carries an interval from the
objects' confidences (`objects.count_intervals`). Where an image is already labelled in the
model's project (matched by content hash), its annotated objects are the true count
(`objects.object_counts`), and the split it held in the model version's dataset version
says whether it is held out (`CountReport.compared`). Every output is written to a
temporary folder first and moved into place at the end, so a bad image leaves nothing
half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from sqlalchemy import select

from labelloop.context import Context
from labelloop.counting.overlay import draw_overlay
from labelloop.counting.report import (
    CountReport,
    ImageCount,
    plot_predicted_vs_true,
    write_csv,
)
from labelloop.datasets.freeze import current_annotations, load_manifest
from labelloop.db.models import DatasetItem, ModelVersion, Project
from labelloop.db.models import Image as ImageRow
from labelloop.domain import shapes_from_json
from labelloop.errors import InputError
from labelloop.imaging import decode_image
from labelloop.ingest.readers.images import IMAGE_SUFFIXES
from labelloop.kinds import kind_entry
from labelloop.objects import (
    CONSTANT,
    RULE_BASIS,
    constant_count_warning,
    count_intervals,
    interval_coverage_warning,
    object_counts,
    thin_labels,
    thin_rules_warning,
)
from labelloop.registry import LoadedModel, load_model_version


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Image files named directly, and the image files inside named folders (recursively,
    sorted); anything else is an error naming the path."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = (f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(sorted(f for f in found if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError("no such file or folder", file=str(p))
    if not files:
        raise InputError("no image files found", file=", ".join(str(p) for p in paths) or "<none>")
    return files


def _truth_by_sha(
    ctx: Context,
    project_id: int,
    dataset_version_id: int,
    labels: Sequence[str],
    kinds: Sequence[str],
) -> dict[str, tuple[dict, str | None]]:
    """By content hash, for every image of the project that has an annotation: its true
    counts (annotated objects of the `kinds` the project's model learns) and the split it
    held in the model's dataset version (None: not in it)."""
    with ctx.db.session() as s:
        chosen = current_annotations(s, project_id)
        shas = dict(
            s.execute(select(ImageRow.id, ImageRow.sha256).where(ImageRow.id.in_(chosen))).all()
        )
        splits = dict(
            s.execute(
                select(DatasetItem.image_id, DatasetItem.split).where(
                    DatasetItem.dataset_version_id == dataset_version_id
                )
            ).all()
        )
        return {
            shas[iid]: (
                object_counts(shapes_from_json(ann.shapes), labels, kinds),
                splits.get(iid),
            )
            for iid, ann in chosen.items()
        }


def seen_only_warning(name: str, images: int) -> str:
    """What a reader must know when every annotated image compared trained or tuned the
    model: its errors there are smaller than on new images."""
    return (
        f"all {images} annotated images counted were in {name}'s training or validation "
        "split, so the errors and interval coverage above are optimistic; count images it "
        "has not seen (its test split, or images annotated since) to measure it"
    )


def thin_rule_basis(
    manifest: dict | None,
    labels: Sequence[str],
    kinds: Sequence[str],
    recorded: dict | None = None,
) -> dict[str, int]:
    """Labels whose instance rules were chosen on too few annotated objects
    (`objects.thin_labels`), with how many there were: as the model version recorded them
    (`recorded`, recipe `instance_rule_objects`: validation plus training images where
    validation held too few), else, for versions trained before that was recorded, the
    validation split's (read from `manifest`, which only they need)."""
    if recorded is not None:
        return thin_labels({lb: int(recorded.get(lb, 0)) for lb in labels})
    found = dict.fromkeys(labels, 0)
    for item in manifest["items"]:
        if item["split"] == "val":
            for lb, n in object_counts(shapes_from_json(item["shapes"]), labels, kinds).items():
                found[lb] += n
    return thin_labels(found)


def _rule_warnings(
    ctx: Context, dataset_version_id: int, name: str, loaded: LoadedModel, kinds: Sequence[str]
) -> list[str]:
    """A warning when the model version's instance rules were chosen on validation (recipe
    `tune_instances`, which stores them) from too few objects of some label."""
    recipe = loaded.recipe
    chosen = getattr(recipe, "tune_instances", False) and getattr(recipe, "instance_min_area", None)
    if getattr(recipe, "mode", None) != "instance" or not chosen:
        return []
    recorded = getattr(recipe, "instance_rule_objects", None)
    manifest = load_manifest(ctx, dataset_version_id) if recorded is None else None
    thin = thin_rule_basis(manifest, loaded.labels, kinds, recorded)
    if not thin:
        return []
    where = RULE_BASIS if recorded is not None else "a validation split"
    return [thin_rules_warning(name, thin, where)]


def count_images(
    ctx: Context,
    model_version_id: int,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    overlays: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> CountReport:
    """Count every image under `paths` with the model version; see the module docstring."""
    files = expand_inputs(paths)
    loaded = load_model_version(ctx, model_version_id)
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        name, project_id, dataset_version_id = mv.name, mv.project_id, mv.dataset_version_id
        kinds = kind_entry(s.get(Project, project_id).task).counted_kinds
        test = mv.metrics.get("test") or {}
        constant = test.get(CONSTANT) or {}
    truths = _truth_by_sha(ctx, project_id, dataset_version_id, loaded.labels, kinds)
    out_dir = Path(out_dir)
    margin = loaded.recipe.count_interval_margin
    report = CountReport(
        name, list(loaded.labels), out_dir, constant=dict(constant), interval_margin=margin
    )
    if loaded.recipe.task == "segmentation" and loaded.recipe.mode != "instance":
        report.warnings.append(
            f"{name} is a {loaded.recipe.mode} segmentation model: touching cells of one "
            "class merge into one region and are counted once; train with mode: instance "
            "to count them apart"
        )
    report.warnings.extend(_rule_warnings(ctx, dataset_version_id, name, loaded, kinds))
    if held_not := interval_coverage_warning(name, test, calibrated=bool(margin)):
        report.warnings.append(held_not)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".count-", dir=out_dir))
    try:
        stems: dict[str, int] = {}
        for n, path in enumerate(files, start=1):
            data = path.read_bytes()
            image = decode_image(data, name=str(path), max_pixels=ctx.settings.max_image_pixels)
            pred = loaded.predict([image])[0]
            truth, split = truths.get(hashlib.sha256(data).hexdigest(), (None, None))
            entry = ImageCount(
                str(path),
                dict(pred.counts),
                truth,
                intervals=count_intervals(pred.shapes, loaded.labels, margin=margin),
                split=split,
            )
            if overlays:
                stem = path.stem
                stems[stem] = stems.get(stem, 0) + 1
                if stems[stem] > 1:  # same file name in two folders
                    stem = f"{stem}-{stems[stem]}"
                overlay = f"{stem}.overlay.png"
                (staging / overlay).write_bytes(
                    draw_overlay(image, pred.shapes, pred.counts, loaded.labels)
                )
                entry.overlay = str(out_dir / overlay)
            report.images.append(entry)
            if on_progress:
                on_progress(n, len(files))
        compared, held_out = report.compared()
        if compared and not held_out:
            report.warnings.append(seen_only_warning(name, len(compared)))
        beaten_not = report.not_beaten()
        if beaten_not:
            report.warnings.append(constant_count_warning(name, beaten_not))
        if plot_predicted_vs_true(report, staging / "counts.png"):
            report.plot = str(out_dir / "counts.png")
        write_csv(report, staging / "counts.csv")
        (staging / "counts.json").write_text(json.dumps(report.to_json(), indent=2))
        for f in staging.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
