"""Per-image uncertainty for classification, from class probabilities (C,).

Normalised to [0, 1] like the segmentation methods, so thresholds mean the same thing for
two classes or ten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from labelloop.scoring.base import MultiPassMethod, ScoringMethod, register

if TYPE_CHECKING:
    from labelloop.training.kind import View

_EPS = 1e-12


def _check(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.shape[0] < 2:
        raise ValueError(f"expected class probabilities of shape (C>=2,), got {p.shape}")
    return p


@register
class Entropy(ScoringMethod):
    """Entropy of the class distribution divided by log C."""

    name = "entropy"
    task = "classification"

    def score(self, probs: np.ndarray) -> float:
        p = _check(probs)
        h = -(p * np.log(np.clip(p, _EPS, 1.0))).sum()
        return float(np.clip(h / math.log(p.shape[0]), 0.0, 1.0))


@register
class Margin(ScoringMethod):
    """1 - (top-1 minus top-2 probability): near 1 when two classes compete."""

    name = "margin"
    task = "classification"

    def score(self, probs: np.ndarray) -> float:
        top = np.sort(_check(probs))[::-1]
        return float(np.clip(1.0 - (top[0] - top[1]), 0.0, 1.0))


@register
class LeastConfidence(ScoringMethod):
    """1 - top-1 probability, rescaled so a uniform distribution scores 1."""

    name = "least_confidence"
    task = "classification"

    def score(self, probs: np.ndarray) -> float:
        p = _check(probs)
        c = p.shape[0]
        return float(np.clip((1.0 - p.max()) * c / (c - 1), 0.0, 1.0))


@register
class ClassificationBald(MultiPassMethod):
    """Mutual information between the prediction and the weights under Monte-Carlo
    dropout (the classifier's dropout before its head), over log C."""

    name = "bald"
    task = "classification"
    passes = "mc"
    n_passes = 10

    def score_views(self, arrays: dict[str, np.ndarray], views: Sequence[View]) -> float:
        stack = np.stack([_check(v.arrays["probs"]) for v in views])  # (T, C)
        mean = stack.mean(axis=0)
        h_mean = -(mean * np.log(np.clip(mean, _EPS, 1.0))).sum()
        h_each = -(stack * np.log(np.clip(stack, _EPS, 1.0))).sum(axis=1).mean()
        return float(np.clip((h_mean - h_each) / math.log(stack.shape[1]), 0.0, 1.0))
