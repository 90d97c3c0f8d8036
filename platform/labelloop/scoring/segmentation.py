"""Per-image uncertainty for segmentation, from softmax probabilities (C, H, W).

A method is a per-pixel measure aggregated over the image. Every measure is normalised to
[0, 1] (0 = the pixel is certain, 1 = uniform over the classes), so scores compare across
projects with different numbers of classes.

Measures: `entropy` (H / log C), `margin` (1 - (top - runner-up)), `least_confidence`
((1 - top) / (1 - 1/C)).

Aggregations, as the name's suffix:
- `mean`: over all pixels. An image ranks by how much of it is uncertain; a smear field
  with a few doubtful cells among many clear ones ranks low.
- `top10`: the mean of the 10 % most uncertain pixels. An image ranks by its worst
  region, whatever its size: one ambiguous cell is enough.
- `fg`: weighted by the predicted foreground probability (plus a 5 % floor), so the
  empty background between cells, which is easy and abundant, does not dilute the score.

Multi-pass methods compare several predictions of one image: `bald` (mutual information
between the prediction and the model's weights under Monte-Carlo dropout: high where
dropout passes disagree, i.e. the model does not know, rather than where the data is
ambiguous), `mc_variance` (variance of the class probabilities across dropout passes) and
`tta_disagreement` (the same mutual information across the 8 flips and quarter turns: a
model that is sure should not change its mind when the image is turned).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from labelloop.scoring.base import MultiPassMethod, ScoringMethod, register

if TYPE_CHECKING:
    from labelloop.training.kind import View

_EPS = 1e-12
TOP_FRACTION = 0.10
FG_FLOOR = 0.05


def _check(probs: np.ndarray) -> np.ndarray:
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"expected probabilities of shape (C>=2, H, W), got {probs.shape}")
    return probs.astype(np.float64, copy=False)


def entropy_map(p: np.ndarray) -> np.ndarray:
    """(C, ...) -> (...) entropy divided by log C."""
    h = -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=0)
    return h / math.log(p.shape[0])


def margin_map(p: np.ndarray) -> np.ndarray:
    top2 = np.partition(p, -2, axis=0)[-2:]
    return 1.0 - (top2[1] - top2[0])


def least_confidence_map(p: np.ndarray) -> np.ndarray:
    c = p.shape[0]
    return (1.0 - p.max(axis=0)) / (1.0 - 1.0 / c)


MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "entropy": entropy_map,
    "margin": margin_map,
    "least_confidence": least_confidence_map,
}


def foreground(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Per-pixel probability that a pixel belongs to some label: the most likely label's
    sigmoid in binary mode, else 1 - p(background)."""
    if "label_probs" in arrays:
        return arrays["label_probs"].max(axis=0).astype(np.float64)
    return 1.0 - arrays["probs"][0].astype(np.float64)


def aggregate(values: np.ndarray, how: str, arrays: dict[str, np.ndarray]) -> float:
    if how == "mean":
        out = values.mean()
    elif how == "top10":
        flat = values.reshape(-1)
        k = max(1, round(flat.size * TOP_FRACTION))
        out = np.partition(flat, flat.size - k)[-k:].mean()
    elif how == "fg":
        w = FG_FLOOR + (1.0 - FG_FLOOR) * foreground(arrays)
        out = (values * w).sum() / w.sum()
    else:
        raise ValueError(f"unknown aggregation {how!r}")
    return float(np.clip(out, 0.0, 1.0))


class _PixelMethod(ScoringMethod):
    task = "segmentation"
    measure: ClassVar[str]
    aggregation: ClassVar[str]

    def score(self, probs: np.ndarray) -> float:
        return self.score_arrays({"probs": probs})

    def score_arrays(self, arrays: dict[str, np.ndarray]) -> float:
        values = MEASURES[self.measure](_check(arrays["probs"]))
        return aggregate(values, self.aggregation, arrays)


def _register_pixel_methods() -> None:
    for measure in MEASURES:
        for how in ("mean", "top10", "fg"):
            cls = type(
                f"{measure.title().replace('_', '')}{how.title()}",
                (_PixelMethod,),
                {
                    "name": f"{measure}_{how}",
                    "measure": measure,
                    "aggregation": how,
                    "__doc__": f"Per-pixel {measure}, aggregated by {how}.",
                    "__module__": __name__,
                },
            )
            register(cls)


_register_pixel_methods()


def _distributions(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(K, C, H, W) categorical distributions: one per label ([1 - p, p]) in binary mode,
    where labels may overlap, else the one softmax."""
    if "label_probs" in arrays:
        q = arrays["label_probs"].astype(np.float64)
        return np.stack([1.0 - q, q], axis=1)
    return _check(arrays["probs"])[None]


def _stack(views: Sequence[View]) -> np.ndarray:
    """(T, K, C, H, W) over the views."""
    return np.stack([_distributions(v.arrays) for v in views])


def mutual_information(stack: np.ndarray) -> np.ndarray:
    """(T, K, C, ...) -> (K, ...): H(mean over T) - mean over T of H, over log C."""
    mean = stack.mean(axis=0)
    h_mean = -(mean * np.log(np.clip(mean, _EPS, 1.0))).sum(axis=1)
    h_each = -(stack * np.log(np.clip(stack, _EPS, 1.0))).sum(axis=2).mean(axis=0)
    return np.clip(h_mean - h_each, 0.0, None) / math.log(stack.shape[2])


class _MutualInformation(MultiPassMethod):
    task = "segmentation"
    n_passes = 8

    def score_views(self, arrays: dict[str, np.ndarray], views: Sequence[View]) -> float:
        return float(np.clip(mutual_information(_stack(views)).mean(), 0.0, 1.0))


@register
class Bald(_MutualInformation):
    """Mean pixel mutual information across Monte-Carlo dropout passes (BALD)."""

    name = "bald"
    passes = "mc"


@register
class McVariance(MultiPassMethod):
    """Mean pixel variance of the class probabilities across dropout passes, over its
    maximum 0.25 (a probability that flips between 0 and 1)."""

    name = "mc_variance"
    task = "segmentation"
    passes = "mc"
    n_passes = 8

    def score_views(self, arrays: dict[str, np.ndarray], views: Sequence[View]) -> float:
        var = _stack(views).var(axis=0).mean(axis=1)  # (K, H, W), mean over classes
        return float(np.clip(var.mean() / 0.25, 0.0, 1.0))


@register
class TtaDisagreement(_MutualInformation):
    """Mean pixel mutual information across the 8 flips and quarter turns."""

    name = "tta_disagreement"
    passes = "tta"
