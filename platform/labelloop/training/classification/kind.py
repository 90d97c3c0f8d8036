"""Classification as a model kind: timm classifier, macro-F1-gated promotion, Tag shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from labelloop.training.classification.calibrate import CALIBRATION
from labelloop.training.classification.data import ClassificationDataModule
from labelloop.training.classification.evaluate import (
    evaluate_classification,
    metrics_of_probs,
    val_probs,
)
from labelloop.training.classification.network import build_classifier
from labelloop.training.classification.predict import load_classifier, predict
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.classification.system import ClassificationSystem
from labelloop.training.classification.views import classification_embed, classification_views
from labelloop.training.harness import TrainingPlan
from labelloop.training.kind import ModelKind


def _system(dm: ClassificationDataModule, recipe: ClassificationRecipe) -> ClassificationSystem:
    weights = dm.class_weights()
    return ClassificationSystem(
        build_classifier(recipe, dm.num_classes),
        recipe,
        dm.labels,
        class_weights=weights.tolist() if weights is not None else None,
    )


def _evaluate_val(
    network: nn.Module, dm: ClassificationDataModule, recipe: ClassificationRecipe
) -> dict[str, Any]:
    """On the val samples the DataModule already cut, rather than cutting them again."""
    assert dm.val_set is not None
    probs = val_probs(network, dm, recipe.views, recipe.batch_size)
    metrics = metrics_of_probs(probs, dm.val_set.samples, dm.labels)
    metrics["split"] = "val"
    return metrics


def _load(weights: bytes | Path, recipe: ClassificationRecipe, labels: Sequence[str]) -> nn.Module:
    return load_classifier(weights, recipe, labels)


KIND = ModelKind(
    training=TrainingPlan(
        task="classification",
        monitor="val_macro_f1",
        build_datamodule=ClassificationDataModule,
        build_system=_system,
        evaluate_val=_evaluate_val,
        calibration=CALIBRATION,
    ),
    load=_load,
    evaluate=evaluate_classification,
    predict=predict,
    views=classification_views,
    embed=classification_embed,
)
