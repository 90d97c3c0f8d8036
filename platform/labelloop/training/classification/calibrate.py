"""Calibration data for classification: each validation sample's softmax and its class."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from labelloop.training.calibration import Calibration
from labelloop.training.classification.evaluate import val_probs
from labelloop.training.classification.recipe import ClassificationRecipe


def collect_samples(
    network: nn.Module, dm: Any, recipe: ClassificationRecipe
) -> tuple[np.ndarray, np.ndarray] | None:
    if dm.val_set is None or not len(dm.val_set):
        return None
    probs = val_probs(network, dm, recipe.views, recipe.batch_size)
    return probs.astype(np.float64), np.asarray(dm.val_set.samples.targets, np.int64)


CALIBRATION = Calibration(
    mode="softmax", collect=collect_samples, arrays={"probs": 0, "class_probs": 1}
)
