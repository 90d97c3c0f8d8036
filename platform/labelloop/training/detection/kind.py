"""Detection as a model kind: YOLO-style detector, mAP@0.5-gated promotion, Box shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from labelloop.training.detection.evaluate import evaluate_detection
from labelloop.training.detection.predict import load_detector, predict_detection
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.detection.train import train_detection
from labelloop.training.detection.views import detection_embed, detection_views
from labelloop.training.kind import ModelKind


def _load(weights: bytes | Path, recipe: DetectionRecipe, labels: Sequence[str]) -> nn.Module:
    return load_detector(weights, recipe, labels)


KIND = ModelKind(
    task="detection",
    recipe_cls=DetectionRecipe,
    primary_metric="map50",
    train=train_detection,
    load=_load,
    evaluate=evaluate_detection,
    predict=predict_detection,
    # The least confident kept box decides: one doubtful cell is worth an annotator's look.
    default_scoring="least_confidence_max",
    views=detection_views,
    embed=detection_embed,
)
