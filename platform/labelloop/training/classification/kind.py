"""Classification as a model kind: timm classifier, macro-F1-gated promotion, Tag shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from labelloop.training.classification.evaluate import evaluate_classification
from labelloop.training.classification.predict import load_classifier, predict
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.classification.train import train_classification
from labelloop.training.classification.views import classification_embed, classification_views
from labelloop.training.kind import Fetch, ModelKind


def _load(weights: bytes | Path, recipe: ClassificationRecipe, labels: Sequence[str]) -> nn.Module:
    return load_classifier(weights, recipe, labels)


def _evaluate(
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    split: str,
    labels: Sequence[str],
    recipe: ClassificationRecipe,
) -> dict[str, Any]:
    return evaluate_classification(
        model, manifest, fetch, split=split, labels=labels, recipe=recipe
    )


KIND = ModelKind(
    task="classification",
    recipe_cls=ClassificationRecipe,
    # Macro-F1, not accuracy: a model that calls every cell an RBC is 86% accurate on BCCD.
    primary_metric="macro_f1",
    train=train_classification,
    load=_load,
    evaluate=_evaluate,
    predict=predict,
    default_scoring="entropy",
    views=classification_views,
    embed=classification_embed,
)
