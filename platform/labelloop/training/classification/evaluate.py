"""Held-out evaluation of a classifier: accuracy, macro-F1, per-class scores, confusion.

Everything derives from one confusion matrix (rows = truth, columns = prediction, in label
order), so accuracy, per-class precision/recall/F1 and the macro mean always agree. A class
absent from the split in both truth and prediction has no F1 (None) and is left out of the
macro mean, as torchmetrics does; macro-F1 is the number a rare class (platelets among
thousands of RBCs) can move, which accuracy hides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

from labelloop.training.classification.data import (
    SampleSet,
    classification_labels,
    load_samples,
)
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.common import Fetch, inference, inputs_to_tensor, split_items
from labelloop.training.passes import DIHEDRAL, transform_image


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """(C, C) int64 counts, row = true class, column = predicted class."""
    t = torch.as_tensor(np.asarray(y_true, dtype=np.int64))
    p = torch.as_tensor(np.asarray(y_pred, dtype=np.int64))
    if t.shape != p.shape:
        raise ValueError(f"{len(p)} predictions for {len(t)} ground truths")
    if len(t) == 0:
        return np.zeros((num_classes, num_classes), np.int64)
    return multiclass_confusion_matrix(p, t, num_classes).numpy().astype(np.int64)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def scores_from_confusion(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    per_class: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(labels):
        per_class[name] = {
            "precision": _ratio(tp[i], tp[i] + fp[i]),
            "recall": _ratio(tp[i], tp[i] + fn[i]),
            "f1": _ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i]),
            "support": int(tp[i] + fn[i]),
            "predicted": int(tp[i] + fp[i]),
        }
    f1s = [c["f1"] for c in per_class.values() if c["f1"] is not None]
    return {
        "n_samples": int(cm.sum()),
        "accuracy": _ratio(tp.sum(), cm.sum()),
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": cm.tolist(),
    }


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Scores of predicted class indices against true ones (indices into `labels`)."""
    return scores_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)


def predict_sample_probs(
    model: nn.Module,
    crops: np.ndarray | Sequence[np.ndarray],
    batch_size: int = 64,
    views: int = 1,
) -> np.ndarray:
    """Softmax probabilities (N, C) float32 for prepared inputs (N, S, S, 3) uint8.

    `views` > 1 averages the softmax over the first `views` symmetries of the square
    (`passes.DIHEDRAL`: the quarter turns, then those of the mirror image). A cell has no
    up or down, so every view is an equally valid look and their mean is steadier than
    one (malaria crops: see BENCHMARKS.md)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not 1 <= views <= len(DIHEDRAL):
        raise ValueError(f"views must be 1 to {len(DIHEDRAL)}, got {views}")
    if views > 1 and len(crops):
        looks = [
            _softmax(model, [transform_image(c, f, k) for c in crops], batch_size)
            for f, k in DIHEDRAL[:views]
        ]
        return np.mean(looks, axis=0, dtype=np.float64).astype(np.float32)
    return _softmax(model, crops, batch_size)


def _softmax(
    model: nn.Module, crops: np.ndarray | Sequence[np.ndarray], batch_size: int
) -> np.ndarray:
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with inference(model):
        for start in range(0, len(crops), batch_size):
            x = inputs_to_tensor(crops[start : start + batch_size]).to(device)
            out.append(model(x).softmax(dim=1).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out)


def evaluate_samples(
    model: nn.Module,
    samples: SampleSet,
    labels: Sequence[str],
    batch_size: int = 64,
    views: int = 1,
) -> dict[str, Any]:
    return metrics_of_probs(
        predict_sample_probs(model, samples.crops, batch_size, views), samples, labels
    )


def metrics_of_probs(
    probs: np.ndarray, samples: SampleSet, labels: Sequence[str]
) -> dict[str, Any]:
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    return classification_metrics(samples.targets, pred, labels)


def val_probs(network: nn.Module, dm: Any, views: int, batch_size: int) -> np.ndarray:
    """The trained network's softmax on the validation samples, computed once: the
    validation scores and the calibration both read it, and with 8 test-time views each
    reading is 8 passes over the split."""
    cached = getattr(dm, "_val_probs", None)
    if cached is not None and cached[0] is network and cached[1] == views:
        return cached[2]
    probs = predict_sample_probs(network, dm.val_set.samples.crops, batch_size, views)
    dm._val_probs = (network, views, probs)
    return probs


def evaluate_classification(
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    split: str = "test",
    labels: Sequence[str] | None = None,
    recipe: ClassificationRecipe,
) -> dict[str, Any]:
    """Predict every sample (image or crop, per the recipe) of `split` and score it.

    `labels` defaults to the manifest's and must be in the order the model was trained on.
    """
    labels = list(labels) if labels is not None else classification_labels(manifest)
    samples = load_samples(split_items(manifest, split), labels, recipe, fetch)
    result = evaluate_samples(model, samples, labels, recipe.batch_size, recipe.views)
    result["split"] = split
    result["n_images"] = len(set(samples.image_ids))
    return result
