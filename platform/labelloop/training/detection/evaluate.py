"""Detection metrics on a manifest split: COCO mAP (pycocotools via torchmetrics) and counts.

`detection_metrics` takes plain arrays, so predictions of any detector (the benchmark
feeds it another framework's boxes) are scored by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from labelloop.errors import ConfigError
from labelloop.objects import COUNT_TRUTH, add_count_baseline
from labelloop.training.common import Fetch, split_items
from labelloop.training.detection.data import item_boxes, load_sample
from labelloop.training.detection.predict import (
    Detections,
    count_floor,
    detect_passes,
    keep_counted,
)
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.detection.system import map_metric


def _value(x: torch.Tensor) -> float | None:
    """pycocotools reports -1 where a class has no ground truth: None in JSON."""
    v = float(x)
    return None if v < 0 else round(v, 6)


def boxes_per_class(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Boxes per class index (0..n_classes - 1) of one image."""
    return np.bincount(np.asarray(classes, np.int64), minlength=n_classes)[:n_classes]


def detection_metrics(
    predictions: Sequence[Detections],
    truths: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: Sequence[str],
    *,
    score_threshold: float,
    counted: Sequence[Detections] | None = None,
) -> dict[str, Any]:
    """mAP@0.5 ("map50", the primary metric), mAP@0.5:0.95 ("map"), per-class AP50/AP and
    per-class count MAE per image. mAP follows COCO (each image's 100 best boxes); counts
    are the boxes of `counted` (default: `predictions`) scoring at least `score_threshold`,
    against ground-truth boxes; truths are (boxes (N, 4) xyxy, class indices (N,))."""
    counted = predictions if counted is None else counted
    if not len(predictions) == len(counted) == len(truths):
        raise ValueError(
            f"{len(predictions)} ranked and {len(counted)} counted predictions "
            f"for {len(truths)} images"
        )
    coco = map_metric(class_metrics=True)
    coco50 = map_metric(class_metrics=True, iou_thresholds=[0.5])
    c = len(labels)
    count_err = np.zeros(c)
    true_total, pred_total = np.zeros(c, np.int64), np.zeros(c, np.int64)
    for det, count_det, (gt_boxes, gt_labels) in zip(predictions, counted, truths, strict=True):
        pred = {
            "boxes": torch.as_tensor(det.boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.as_tensor(det.scores, dtype=torch.float32),
            "labels": torch.as_tensor(det.labels, dtype=torch.long),
        }
        true = {
            "boxes": torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(gt_labels, dtype=torch.long),
        }
        coco.update([pred], [true])
        coco50.update([pred], [true])
        kept = np.asarray(count_det.labels)[np.asarray(count_det.scores) >= score_threshold]
        n_pred, n_true = boxes_per_class(kept, c), boxes_per_class(gt_labels, c)
        count_err += np.abs(n_pred - n_true)
        pred_total += n_pred
        true_total += n_true
    n = max(len(truths), 1)
    full, half = coco.compute(), coco50.compute()
    present = [int(i) for i in full["classes"].reshape(-1).tolist()]
    ap = dict(zip(present, full["map_per_class"].reshape(-1), strict=True))
    ap50 = dict(zip(present, half["map_per_class"].reshape(-1), strict=True))
    per_class = {
        name: {
            "ap50": _value(ap50[i]) if i in ap50 else None,
            "ap": _value(ap[i]) if i in ap else None,
            "count_mae": round(float(count_err[i] / n), 4),
            "n_true": int(true_total[i]),
            "n_pred": int(pred_total[i]),
        }
        for i, name in enumerate(labels)
    }
    return {
        "map50": _value(full["map_50"]) or 0.0,
        "map": _value(full["map"]) or 0.0,
        "map75": _value(full["map_75"]) or 0.0,
        "count_mae": round(float(count_err.mean() / n), 4),
        "per_class": per_class,
        "n_images": len(truths),
        "score_threshold": score_threshold,
        "count_truth": COUNT_TRUTH,
    }


def evaluate_detection(
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    split: str,
    labels: Sequence[str],
    recipe: DetectionRecipe,
) -> dict[str, Any]:
    """The metrics of `detection_metrics` for one split of the manifest (primary: map50)."""
    items = split_items(manifest, split)
    if not items:
        raise ConfigError(f"manifest has no {split!r} images to evaluate on")
    samples = [load_sample(it, labels, fetch) for it in items]
    # mAP needs the low-scoring tail of the ranking (a box per class); counts are what
    # `predict` keeps: one box per point above its class's count threshold.
    ranked, kept = detect_passes(
        model,
        [s[0] for s in samples],
        recipe,
        [(recipe.eval_score_threshold, True), (count_floor(recipe), False)],
    )
    kept = [keep_counted(d, recipe, labels) for d in kept]
    result = detection_metrics(
        ranked,
        [(s[1], s[2]) for s in samples],
        labels,
        score_threshold=0.0,  # `kept` holds exactly the counted boxes
        counted=kept,
    )
    result["score_threshold"] = recipe.score_threshold
    result["count_thresholds"] = {
        lb: recipe.count_thresholds.get(lb, recipe.score_threshold) for lb in labels
    }
    # The constant count a model must beat, counted as the truth above is (boxes per class).
    n = len(labels)
    add_count_baseline(
        result,
        labels,
        [boxes_per_class(item_boxes(it, labels)[1], n) for it in split_items(manifest, "train")],
        [boxes_per_class(s[2], n) for s in samples],
    )
    return {**result, "split": split}


COUNT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def choose_count_thresholds(
    counted: Sequence[Detections],
    truths: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    default: float,
    grid: Sequence[float] = COUNT_GRID,
) -> dict[str, float]:
    """Per class, the score threshold whose count MAE per image is lowest over `counted`
    (detections kept down to the grid's lowest threshold) against the true class indices of
    each image; ties go to the threshold nearest `default`. A class without true boxes
    keeps `default`."""
    out: dict[str, float] = {}
    for c, name in enumerate(labels):
        true = np.array([int((np.asarray(t) == c).sum()) for t in truths])
        if true.sum() == 0:
            out[name] = default
            continue
        scores = [d.scores[d.labels == c] for d in counted]

        def mae(t: float, scores=scores, true=true) -> float:
            pred = [int((s >= t).sum()) for s in scores]
            return float(np.mean(np.abs(np.asarray(pred) - true)))

        out[name] = min(grid, key=lambda t: (round(mae(t), 9), abs(t - default)))
    return out


def tune_count_thresholds(
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    labels: Sequence[str],
    recipe: DetectionRecipe,
) -> DetectionRecipe:
    """The recipe with per-class count thresholds chosen on the validation split (unchanged
    when the recipe opts out or there is no validation split)."""
    items = split_items(manifest, "val")
    if not recipe.tune_count_thresholds or not items:
        return recipe
    samples = [load_sample(it, labels, fetch) for it in items]
    (counted,) = detect_passes(model, [s[0] for s in samples], recipe, [(min(COUNT_GRID), False)])
    chosen = choose_count_thresholds(
        counted, [s[2] for s in samples], labels, default=recipe.score_threshold
    )
    return recipe.model_copy(update={"count_thresholds": chosen})
