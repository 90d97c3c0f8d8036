"""A model version's predictions on the test split of the dataset version it was trained
on, image by image, against the truth as annotated: what the worst-first gallery, the
count scatter and the reliability diagram are drawn from.

Stored metrics are aggregates; these per-image rows are recomputed on demand (the test
split is small) and callers cache them per model version."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select

from labelloop.context import Context
from labelloop.db.models import Annotation, DatasetItem, ModelVersion, Project
from labelloop.db.models import Image as ImageRow
from labelloop.domain import Tag, shapes_from_json, shapes_to_json
from labelloop.imaging import decode_image
from labelloop.kinds import kind_entry
from labelloop.objects import object_counts
from labelloop.registry import load_model_version

MAX_IMAGES = 200


def test_predictions(
    ctx: Context, model_version_id: int, *, limit: int = MAX_IMAGES
) -> list[dict[str, Any]]:
    """One row per test image (at most `limit`), worst first: predicted and true counts
    per class, the absolute count error, the image-level label and confidence, and the
    predicted and true shapes (canonical JSON)."""
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        counted = kind_entry(s.get(Project, mv.project_id).task).counted_kinds
        rows = s.execute(
            select(ImageRow.id, ImageRow.blob_key, Annotation.shapes)
            .join(DatasetItem, DatasetItem.image_id == ImageRow.id)
            .join(Annotation, Annotation.id == DatasetItem.annotation_id)
            .where(DatasetItem.dataset_version_id == mv.dataset_version_id)
            .where(DatasetItem.split == "test")
            .order_by(ImageRow.id)
            .limit(limit)
        ).all()
    if not rows:
        return []
    loaded = load_model_version(ctx, model_version_id)
    labels = list(loaded.labels)
    out = []
    for image_id, blob_key, truth_json in rows:
        image = decode_image(ctx.blobs.get_bytes(blob_key), name=blob_key)
        pred = loaded.predict([image])[0]
        truth_shapes = shapes_from_json(truth_json)
        truth = object_counts(truth_shapes, labels, counted)  # annotated objects
        counts = {lb: int(pred.counts.get(lb, 0)) for lb in labels}
        true_tag = next((sh.label for sh in truth_shapes if isinstance(sh, Tag)), None)
        pred_tag = next((sh.label for sh in pred.shapes if isinstance(sh, Tag)), None)
        out.append(
            {
                "image_id": image_id,
                "counts": counts,
                "truth": truth,
                "error": int(sum(abs(counts[lb] - truth.get(lb, 0)) for lb in labels)),
                "confidence": float(pred.confidence),
                "pred_label": pred_tag,
                "true_label": true_tag,
                "pred_shapes": shapes_to_json(pred.shapes),
                "true_shapes": truth_json,
            }
        )
    out.sort(key=lambda r: (-r["error"], r["confidence"], r["image_id"]))
    return out


def reliability(rows: list[dict[str, Any]], bins: int = 10) -> list[dict[str, float]]:
    """Confidence against accuracy per confidence bin, for image-level labels (classifiers);
    empty when the predictions carry no image label."""
    pairs = [
        (r["confidence"], r["pred_label"] == r["true_label"])
        for r in rows
        if r["pred_label"] is not None and r["true_label"] is not None
    ]
    if not pairs:
        return []
    conf = np.array([c for c, _ in pairs])
    hit = np.array([h for _, h in pairs], dtype=float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return [
        {
            "confidence": float(conf[idx == b].mean()),
            "accuracy": float(hit[idx == b].mean()),
            "n": int((idx == b).sum()),
        }
        for b in range(bins)
        if (idx == b).any()
    ]
