"""Per-image uncertainty for detection, from the kept boxes' confidence scores (N,).

A box scored near 0.5 is one the model cannot decide on; a box near 1 is settled. An image
on which the model finds nothing at all is treated as maximally uncertain: in a smear every
field holds cells, so an empty prediction means the model is lost, not sure.

Single-pass methods read the kept boxes' scores or class distributions; `tta_localisation`
and `count_variance` compare the plain prediction with its 7 flipped and turned views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from labelloop.scoring.base import MultiPassMethod, ScoringMethod, register

if TYPE_CHECKING:
    from labelloop.training.kind import View

_EPS = 1e-12


def _check(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size and (s.min() < 0 or s.max() > 1):
        raise ValueError("box scores must lie in [0, 1]")
    return s


@register
class BoxEntropyMean(ScoringMethod):
    """Mean binary entropy (bits) of the box scores; 1.0 when there are no boxes."""

    name = "box_entropy_mean"
    task = "detection"
    reads = "scores"

    def score(self, probs: np.ndarray) -> float:
        s = np.clip(_check(probs), _EPS, 1 - _EPS)
        if s.size == 0:
            return 1.0
        h = -(s * np.log2(s) + (1 - s) * np.log2(1 - s))
        return float(np.clip(h.mean(), 0.0, 1.0))


@register
class LeastConfidenceMax(ScoringMethod):
    """The least confident box decides: max over boxes of 2 * min(s, 1 - s) (1 at s = 0.5);
    1.0 when there are no boxes."""

    name = "least_confidence_max"
    task = "detection"
    reads = "scores"

    def score(self, probs: np.ndarray) -> float:
        s = _check(probs)
        if s.size == 0:
            return 1.0
        return float(np.clip((2 * np.minimum(s, 1 - s)).max(), 0.0, 1.0))


def _class_entropy(class_probs: np.ndarray) -> np.ndarray:
    """(N, C) per-class sigmoid scores -> (N,) entropy of each box's normalised class
    distribution over log C (0: one class, 1: every class equally likely)."""
    p = np.asarray(class_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected class scores of shape (N, C>=2), got {p.shape}")
    p = p / np.clip(p.sum(axis=1, keepdims=True), _EPS, None)
    return -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=1) / np.log(p.shape[1])


@register
class ClassEntropyMean(ScoringMethod):
    """Mean over boxes of the entropy of each box's class distribution: is it an RBC or a
    platelet? 1.0 when there are no boxes (and 0 for a single-class project)."""

    name = "class_entropy_mean"
    task = "detection"
    reads = "class_probs"

    def score(self, probs: np.ndarray) -> float:
        p = np.asarray(probs)
        if p.size == 0 or p.ndim != 2:
            return 1.0
        if p.shape[1] < 2:
            return 0.0
        return float(np.clip(_class_entropy(p).mean(), 0.0, 1.0))


@register
class OneMinusConfidenceMean(ScoringMethod):
    """Mean over kept boxes of 1 - box score; 1.0 when there are no boxes."""

    name = "one_minus_conf_mean"
    task = "detection"
    reads = "scores"

    def score(self, probs: np.ndarray) -> float:
        s = _check(probs)
        return 1.0 if s.size == 0 else float(np.clip((1.0 - s).mean(), 0.0, 1.0))


def _same_class_iou(a: np.ndarray, la: np.ndarray, b: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """(N, M) IoU between boxes of the same class, 0 across classes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / np.clip(area_a[:, None] + area_b[None, :] - inter, _EPS, None)
    return np.where(la[:, None] == lb[None, :], iou, 0.0)


@register
class TtaLocalisation(MultiPassMethod):
    """Localisation instability under test-time augmentation: each box of the plain
    prediction is matched to its best same-class box in every flipped / turned view (and
    each view's boxes back to the plain ones); the score is 1 - the mean matched IoU, so
    boxes that move, vanish or appear between views all raise it. 1.0 without boxes."""

    name = "tta_localisation"
    task = "detection"
    passes = "tta"
    n_passes = 7

    def score_views(self, arrays: dict[str, np.ndarray], views: Sequence[View]) -> float:
        boxes, labels = np.asarray(arrays["boxes"]), np.asarray(arrays["labels"])
        if len(boxes) == 0:
            return 1.0
        per_view = []
        for v in views:
            iou = _same_class_iou(boxes, labels, v.arrays["boxes"], v.arrays["labels"])
            fwd = iou.max(axis=1) if iou.shape[1] else np.zeros(len(boxes))
            back = iou.max(axis=0) if iou.shape[1] else np.zeros(0)
            per_view.append(1.0 - np.concatenate([fwd, back]).mean())
        return float(np.clip(np.mean(per_view), 0.0, 1.0))


@register
class CountVariance(MultiPassMethod):
    """Count uncertainty: per class, the standard deviation of the predicted count across
    the plain prediction and its TTA views over (mean count + 1), averaged over classes.
    Counts are what users report, so an image whose count moves when it is flipped is one
    whose reported number cannot be trusted."""

    name = "count_variance"
    task = "detection"
    passes = "tta"
    n_passes = 7

    def score_views(self, arrays: dict[str, np.ndarray], views: Sequence[View]) -> float:
        n_classes = np.asarray(arrays["class_probs"]).shape[-1]
        labels_all = [arrays["labels"], *(v.arrays["labels"] for v in views)]
        counts = np.stack(
            [np.bincount(np.asarray(lb, np.int64), minlength=n_classes) for lb in labels_all]
        )
        rel = counts.std(axis=0) / (counts.mean(axis=0) + 1.0)
        return float(np.clip(rel.mean(), 0.0, 1.0))


def box_statistics(arrays: dict[str, np.ndarray], labels: list[str]) -> dict[str, dict]:
    """Per class, from a detection's (calibrated) kept-box scores: `box_uncertainty`, the
    sum of 2 * min(s, 1 - s) over its boxes, and `count_sd`, the standard deviation of its
    count if each box is a real cell with probability s (sqrt of the sum of s(1 - s)).
    Stored with the score, they let strategies weigh classes without re-running the model.
    Empty for a prediction that is not a detection."""
    if "scores" not in arrays or "labels" not in arrays:
        return {}
    s = _check(arrays["scores"])
    lab = np.asarray(arrays["labels"], np.int64).reshape(-1)
    unc, sd = {}, {}
    for i, name in enumerate(labels):
        si = s[lab == i]
        unc[name] = round(float((2 * np.minimum(si, 1 - si)).sum()), 6)
        sd[name] = round(float(np.sqrt((si * (1 - si)).sum())), 6)
    return {"box_uncertainty": unc, "count_sd": sd}
