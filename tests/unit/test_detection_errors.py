"""The error breakdown's AP must be the AP every detection figure reports, so that its
"without background boxes" columns are read on the same scale."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.detection_errors import ap101, classify
from labelloop.training.detection.evaluate import detection_metrics
from labelloop.training.detection.predict import Detections


def _field(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(15, 60, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_ap_of_the_breakdown_equals_the_reported_ap50_and_errors_are_sorted_by_overlap():
    rng = np.random.default_rng(3)
    preds, truths, kinds, scores, n_true = [], [], [], [], 0
    for _ in range(6):
        truth = _field(rng, 12)
        jitter = truth[:9] + rng.normal(0, 4, (9, 4)).astype(np.float32)
        boxes = np.concatenate([jitter, truth[:2] + 1, _field(rng, 5)])  # hits, dups, others
        s = rng.uniform(0.01, 1, len(boxes)).astype(np.float32)
        preds.append(
            Detections(
                boxes, s, np.zeros(len(boxes), np.int64), np.ones((len(boxes), 1), np.float32)
            )
        )
        truths.append((truth, np.zeros(len(truth), np.int64)))
        k = classify(torch.as_tensor(boxes), s, torch.as_tensor(truth), torch.zeros(0, 4))
        kinds += k
        scores.append(s)
        n_true += len(truth)
    reported = detection_metrics(preds, truths, ["cell"], score_threshold=0.25)
    tp = (np.asarray(kinds) == "tp").astype(float)
    assert (
        abs(ap101(tp, np.concatenate(scores), n_true) - reported["per_class"]["cell"]["ap50"])
        < 1e-3
    )
    assert {"tp", "duplicate", "background"} <= set(kinds)
