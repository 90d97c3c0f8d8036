"""Counting cells in image files with a model version: counts, overlays, error vs truth.

`count_images` runs any model kind (detection boxes, segmentation instances, a classifier's
label) through its `predict`, writes one overlay PNG per image (boxes or contours and a
count legend) plus `counts.csv` and `counts.json`. Where an image is already labelled in
the model's project (matched by content hash), its annotation is the ground truth and the
report gives count MAE and relative error per class. Every output is written to a
temporary folder first and moved into place at the end, so a bad image leaves nothing
half-written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import select

from labelloop.context import Context
from labelloop.datasets.freeze import current_annotations
from labelloop.db.models import Image as ImageRow
from labelloop.db.models import ModelVersion, Project
from labelloop.domain import Box, Mask, Polygon, Shape, Tag, shapes_from_json
from labelloop.errors import InputError
from labelloop.geometry import shape_mask
from labelloop.imaging import decode_image
from labelloop.ingest.readers.images import IMAGE_SUFFIXES
from labelloop.kinds import kind_entry
from labelloop.objects import object_counts
from labelloop.registry import load_model_version

# Distinct, colour-blind-friendly colours (Okabe-Ito), one per label in project order.
PALETTE = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (0, 0, 0),
]


@dataclass
class ImageCount:
    file: str
    counts: dict[str, int]
    truth: dict[str, int] | None = None
    overlay: str | None = None

    def errors(self) -> dict[str, int] | None:
        if self.truth is None:
            return None
        return {k: self.counts.get(k, 0) - self.truth.get(k, 0) for k in self.counts}


@dataclass
class CountReport:
    model: str
    labels: list[str]
    out_dir: Path
    images: list[ImageCount] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        return {lb: sum(im.counts.get(lb, 0) for im in self.images) for lb in self.labels}

    def accuracy(self) -> dict[str, dict[str, float]] | None:
        """Per class: MAE per image and relative error of the total, over labelled images."""
        known = [im for im in self.images if im.truth is not None]
        if not known:
            return None
        out: dict[str, dict[str, float]] = {}
        for lb in self.labels:
            pred = np.array([im.counts.get(lb, 0) for im in known], dtype=float)
            true = np.array([im.truth.get(lb, 0) for im in known], dtype=float)  # type: ignore[union-attr]
            total = true.sum()
            out[lb] = {
                "mae": round(float(np.abs(pred - true).mean()), 4),
                "relative_error": round(float(abs(pred.sum() - total) / total), 4)
                if total
                else None,
                "images": len(known),
            }
        return out

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "labels": self.labels,
            "out_dir": str(self.out_dir),
            "totals": self.totals(),
            "accuracy": self.accuracy(),
            "images": [
                {
                    "file": im.file,
                    "counts": im.counts,
                    "truth": im.truth,
                    "errors": im.errors(),
                    "overlay": im.overlay,
                }
                for im in self.images
            ],
        }


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


def _truth_by_sha(ctx: Context, model_version_id: int, labels: Sequence[str]) -> dict[str, dict]:
    """True counts (annotated objects of the kinds the project's model learns) of every
    image of the model's project that has an annotation, by content hash."""
    with ctx.db.session() as s:
        project = s.get(Project, s.get(ModelVersion, model_version_id).project_id)
        kinds = kind_entry(project.task).counted_kinds
        chosen = current_annotations(s, project.id)
        shas = dict(
            s.execute(select(ImageRow.id, ImageRow.sha256).where(ImageRow.id.in_(chosen))).all()
        )
        return {
            shas[iid]: object_counts(shapes_from_json(ann.shapes), labels, kinds)
            for iid, ann in chosen.items()
        }


def draw_overlay(
    image: np.ndarray, shapes: Sequence[Shape], counts: dict[str, int], labels: Sequence[str]
) -> bytes:
    """PNG of the image with boxes / instance contours in each label's colour and a legend."""
    colour = {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(labels)}
    canvas = np.ascontiguousarray(image.copy())
    h, w = canvas.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    for sh in shapes:
        c = colour.get(sh.label, (255, 0, 0))
        if isinstance(sh, Box):
            p1 = (round(sh.x), round(sh.y))
            p2 = (round(sh.x + sh.w), round(sh.y + sh.h))
            cv2.rectangle(canvas, p1, p2, c, thick)
        elif isinstance(sh, Mask | Polygon):
            m = shape_mask(sh, h, w)
            if m is None:
                continue
            contours, _ = cv2.findContours(
                m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(canvas, contours, -1, c, thick)
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    lines = [f"{lb}: {counts.get(lb, 0)}" for lb in labels]
    tags = [sh.label for sh in shapes if isinstance(sh, Tag)]
    if tags:
        lines.insert(0, f"class: {', '.join(tags)}")
    line_h = 12
    box_w = 8 + 7 * max(len(t) for t in lines)
    draw.rectangle((0, 0, box_w, 6 + line_h * len(lines)), fill=(255, 255, 255))
    for i, text in enumerate(lines):
        lb = text.split(":")[0]
        draw.text((4, 3 + i * line_h), text, fill=colour.get(lb, (0, 0, 0)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


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
        name = s.get(ModelVersion, model_version_id).name
    truths = _truth_by_sha(ctx, model_version_id, loaded.labels)
    out_dir = Path(out_dir)
    report = CountReport(name, list(loaded.labels), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".count-", dir=out_dir))
    try:
        stems: dict[str, int] = {}
        for n, path in enumerate(files, start=1):
            data = path.read_bytes()
            image = decode_image(data, name=str(path), max_pixels=ctx.settings.max_image_pixels)
            pred = loaded.predict([image])[0]
            entry = ImageCount(
                str(path), dict(pred.counts), truths.get(hashlib.sha256(data).hexdigest())
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
        _write_tables(report, staging)
        for f in staging.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _write_tables(report: CountReport, folder: Path) -> None:
    labels = report.labels
    with open(folder / "counts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", *labels, *[f"true_{lb}" for lb in labels]])
        for im in report.images:
            truth = [im.truth.get(lb, 0) for lb in labels] if im.truth else [""] * len(labels)
            w.writerow([im.file, *[im.counts.get(lb, 0) for lb in labels], *truth])
    (folder / "counts.json").write_text(json.dumps(report.to_json(), indent=2))
