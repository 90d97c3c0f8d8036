"""Calibration data for detection: box class scores on the validation split.

Each box the detector keeps (down to a low score, so the doubtful tail is represented) is
a positive if it matches an unmatched annotated box of its class at IoU >= 0.5, taken in
score order (the matching mAP@0.5 uses), else a negative. The fitted temperature rescales
the kept boxes' scores and per-class sigmoid scores; which boxes are kept stays as
trained (the recipe's threshold applies to raw scores)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from labelloop.training.calibration import Calibration, stack
from labelloop.training.common import split_items
from labelloop.training.detection.data import load_sample
from labelloop.training.detection.predict import Detections, detect
from labelloop.training.detection.recipe import DetectionRecipe

SCORE_FLOOR = 0.05
MATCH_IOU = 0.5


def overlaps(det: Detections, gt_boxes: np.ndarray) -> np.ndarray:
    """(N, G) IoU of every detection with every truth box, whatever their classes."""
    if not len(det.scores) or not len(gt_boxes):
        return np.zeros((len(det.scores), len(gt_boxes)), np.float32)
    return box_iou(
        torch.as_tensor(det.boxes, dtype=torch.float32).reshape(-1, 4),
        torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
    ).numpy()


def match_boxes(
    det: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray, iou: np.ndarray | None = None
) -> np.ndarray:
    """(N,) 0/1: whether each detection (in score order) takes a same-class truth box.

    `iou`, the caller's `overlaps(det, gt_boxes)` where it has one, saves computing it
    again; it is not modified."""
    hits = np.zeros(len(det.scores), np.int64)
    if not len(det.scores) or not len(gt_boxes):
        return hits
    iou = overlaps(det, gt_boxes) if iou is None else iou.copy()
    iou[det.labels[:, None] != np.asarray(gt_labels)[None, :]] = 0.0
    taken = np.zeros(len(gt_boxes), bool)
    for i in np.argsort(-det.scores, kind="stable"):
        cand = np.where(~taken, iou[i], 0.0)
        j = int(cand.argmax())
        if cand[j] >= MATCH_IOU:
            taken[j] = True
            hits[i] = 1
    return hits


def collect_boxes(
    network: nn.Module, dm: Any, recipe: DetectionRecipe
) -> tuple[np.ndarray, np.ndarray] | None:
    pairs = []
    for item in split_items(dm.manifest, "val"):
        image, boxes, classes = load_sample(item, dm.labels, dm.fetch)
        det = detect(network, [image], recipe, score_threshold=SCORE_FLOOR)[0]
        pairs.append((det.scores.astype(np.float64), match_boxes(det, boxes, classes)))
    probs, labels = stack(pairs) if pairs else (np.zeros(0), np.zeros(0))
    return (probs, labels) if len(labels) else None


CALIBRATION = Calibration(
    mode="sigmoid", collect=collect_boxes, arrays={"scores": None, "class_probs": None}
)
