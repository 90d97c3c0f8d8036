"""Segmentation as a model kind: smp U-Net family, Dice-gated promotion, mask shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from labelloop.training.harness import TrainingPlan
from labelloop.training.kind import ModelKind
from labelloop.training.segmentation.calibrate import CALIBRATION
from labelloop.training.segmentation.data import SegmentationDataModule
from labelloop.training.segmentation.evaluate import evaluate_segmentation, tune_instance_rules
from labelloop.training.segmentation.network import build_network, output_channels
from labelloop.training.segmentation.predict import load_model, predict_segmentation
from labelloop.training.segmentation.recipe import SegmentationRecipe
from labelloop.training.segmentation.system import SegmentationSystem
from labelloop.training.segmentation.views import segmentation_embed, segmentation_views


def _system(dm: SegmentationDataModule, recipe: SegmentationRecipe) -> SegmentationSystem:
    class_weights = dm.class_weights()
    return SegmentationSystem(
        build_network(recipe, dm.num_classes),
        recipe,
        dm.labels,
        class_weights=class_weights.tolist() if class_weights is not None else None,
    )


def _evaluate_val(
    network: nn.Module, dm: SegmentationDataModule, recipe: SegmentationRecipe
) -> dict[str, Any]:
    return evaluate_segmentation(
        network, dm.manifest, dm.fetch, split="val", labels=dm.labels, recipe=recipe
    )


def _load(weights: bytes | Path, recipe: SegmentationRecipe, labels: Sequence[str]) -> nn.Module:
    return load_model(weights, recipe, num_classes=output_channels(recipe, len(labels)))


KIND = ModelKind(
    training=TrainingPlan(
        task="segmentation",
        monitor="val_dice",
        build_datamodule=SegmentationDataModule,
        build_system=_system,
        evaluate_val=_evaluate_val,
        calibration=CALIBRATION,
    ),
    load=_load,
    evaluate=evaluate_segmentation,
    predict=predict_segmentation,
    views=segmentation_views,
    embed=segmentation_embed,
    calibrate=tune_instance_rules,
    count_intervals=True,
)
