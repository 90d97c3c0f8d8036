"""Detection as a model kind: YOLO-style detector, mAP@0.5-gated promotion, Box shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from labelloop.training.detection.calibrate import CALIBRATION
from labelloop.training.detection.data import DetectionDataModule
from labelloop.training.detection.evaluate import evaluate_detection, tune_count_thresholds
from labelloop.training.detection.network import build_detector
from labelloop.training.detection.predict import load_detector, predict_detection
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.detection.system import DetectionSystem
from labelloop.training.detection.views import detection_embed, detection_views
from labelloop.training.harness import TrainingPlan
from labelloop.training.kind import ModelKind


def _system(dm: DetectionDataModule, recipe: DetectionRecipe) -> DetectionSystem:
    return DetectionSystem(build_detector(recipe, dm.num_classes), recipe, dm.labels)


def _evaluate_val(
    network: nn.Module, dm: DetectionDataModule, recipe: DetectionRecipe
) -> dict[str, Any]:
    return evaluate_detection(
        network, dm.manifest, dm.fetch, split="val", labels=dm.labels, recipe=recipe
    )


def _load(weights: bytes | Path, recipe: DetectionRecipe, labels: Sequence[str]) -> nn.Module:
    return load_detector(weights, recipe, labels)


KIND = ModelKind(
    training=TrainingPlan(
        task="detection",
        monitor="val_map50",
        build_datamodule=DetectionDataModule,
        build_system=_system,
        evaluate_val=_evaluate_val,
        calibration=CALIBRATION,
    ),
    load=_load,
    evaluate=evaluate_detection,
    predict=predict_detection,
    views=detection_views,
    embed=detection_embed,
    calibrate=tune_count_thresholds,
    count_intervals=True,
)
