"""Calibration data for segmentation: pixel softmax on the validation split.

Multiclass: each sampled pixel's softmax over classes with its annotated class. Binary:
each label's sigmoid as the two-class distribution [1 - p, p] (softmax scaling of that
pair is exactly sigmoid scaling of p), which is also the "probs" array the scorers read.
Instance recipes are not calibrated (their truth is an instance map, not per-pixel
classes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from labelloop.training.calibration import Calibration, stack
from labelloop.training.common import split_items
from labelloop.training.segmentation.data import load_shapes
from labelloop.training.segmentation.evaluate import _truth
from labelloop.training.segmentation.predict import predict_outputs
from labelloop.training.segmentation.recipe import SegmentationRecipe

PIXELS_PER_IMAGE = 20_000


def _sample(n: int, seed: int) -> np.ndarray:
    if n <= PIXELS_PER_IMAGE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, PIXELS_PER_IMAGE, replace=False))


def collect_pixels(
    network: nn.Module, dm: Any, recipe: SegmentationRecipe
) -> tuple[np.ndarray, np.ndarray] | None:
    if recipe.mode == "instance":
        return None
    pairs = []
    for k, item in enumerate(split_items(dm.manifest, "val")):
        image, shapes = load_shapes(item, dm.fetch)
        out = predict_outputs(network, [image], recipe)[0]
        truth = _truth(item, shapes, dm.labels, image.shape[:2], recipe.mode)
        if recipe.mode == "binary":  # (L, H, W) sigmoid and bool truth
            p = out.reshape(-1).astype(np.float64)
            y = np.asarray(truth).reshape(-1).astype(np.int64)
            idx = _sample(len(y), k)
            pairs.append((np.stack([1 - p[idx], p[idx]], axis=1), y[idx]))
        else:  # (C, H, W) softmax and (H, W) class map
            p = out.reshape(out.shape[0], -1).T
            y = np.asarray(truth).reshape(-1).astype(np.int64)
            idx = _sample(len(y), k)
            pairs.append((p[idx].astype(np.float64), y[idx]))
    return stack(pairs) if pairs else None


CALIBRATION = Calibration(mode="softmax", collect=collect_pixels, arrays={"probs": 0})
