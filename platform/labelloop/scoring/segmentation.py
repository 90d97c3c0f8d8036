"""Per-image uncertainty for segmentation, from softmax probabilities (C, H, W).

Each method averages a per-pixel uncertainty over the image and is normalised to [0, 1]
(0 = every pixel certain, 1 = every pixel uniform), so scores are comparable between
projects with different numbers of classes. Averaging over pixels means that an image is
ranked by how much of it is uncertain.
"""

from __future__ import annotations

import math

import numpy as np

from labelloop.scoring.base import ScoringMethod, register

_EPS = 1e-12


def _check(probs: np.ndarray) -> np.ndarray:
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"expected probabilities of shape (C>=2, H, W), got {probs.shape}")
    return probs.astype(np.float64, copy=False)


@register
class EntropyMean(ScoringMethod):
    """Mean pixel entropy divided by log C."""

    name = "entropy_mean"
    task = "segmentation"

    def score(self, probs: np.ndarray) -> float:
        p = _check(probs)
        entropy = -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=0)
        return float(np.clip(entropy.mean() / math.log(p.shape[0]), 0.0, 1.0))


@register
class MarginMean(ScoringMethod):
    """Mean of 1 - (top probability - runner-up): small margins mean a close call."""

    name = "margin_mean"
    task = "segmentation"

    def score(self, probs: np.ndarray) -> float:
        p = _check(probs)
        top2 = np.partition(p, -2, axis=0)[-2:]
        return float(np.clip((1.0 - (top2[1] - top2[0])).mean(), 0.0, 1.0))


@register
class LeastConfidenceMean(ScoringMethod):
    """Mean of 1 - top probability, scaled by its maximum 1 - 1/C."""

    name = "least_confidence_mean"
    task = "segmentation"

    def score(self, probs: np.ndarray) -> float:
        p = _check(probs)
        c = p.shape[0]
        return float(np.clip((1.0 - p.max(axis=0)).mean() / (1.0 - 1.0 / c), 0.0, 1.0))
