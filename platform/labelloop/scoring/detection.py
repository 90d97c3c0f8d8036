"""Per-image uncertainty for detection, from the kept boxes' confidence scores (N,).

A box scored near 0.5 is one the model cannot decide on; a box near 1 is settled. An image
on which the model finds nothing at all is treated as maximally uncertain: in a smear every
field holds cells, so an empty prediction means the model is lost, not sure.
"""

from __future__ import annotations

import numpy as np

from labelloop.scoring.base import ScoringMethod, register

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
