"""Segmentation as a model kind: smp U-Net family, Dice-gated promotion, mask shapes.

What a prediction holds depends on the recipe's mode:
- multiclass: one Mask per connected region, counts of connected regions; "probs" is the
  softmax (L + 1, H, W) and "label_map" its argmax.
- binary: one Mask per connected region of each label's mask (labels may overlap);
  "label_probs" is the sigmoid (L, H, W); "probs" is (2, H, W), [1 - q, q] with q the
  least certain label's probability at each pixel (see `predict.uncertainty_probs`), so
  the softmax uncertainty scorers apply unchanged; "label_map" gives each pixel the most
  likely label above 0.5.
- instance: one Mask per watershed instance and counts of instances, so touching cells
  count separately; "probs" is the softmax (1 + 2L, H, W) over background / interiors /
  contours, "instances" the instance map and "label_map" the label map it implies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from labelloop.objects import (
    counts_from_instances,
    counts_from_label_map,
    counts_from_masks,
    instance_shapes,
    label_map_to_shapes,
    masks_to_shapes,
    probs_to_label_map,
)
from labelloop.training.kind import Fetch, ModelKind, PassMode, Prediction, View
from labelloop.training.recipe import SegmentationRecipe
from labelloop.training.segmentation.evaluate import evaluate_segmentation
from labelloop.training.segmentation.instances import instances_from_probs, semantic_map
from labelloop.training.segmentation.network import output_channels
from labelloop.training.segmentation.predict import (
    embed_images,
    load_model,
    predict_outputs,
    predict_prob_views,
    uncertainty_probs,
)
from labelloop.training.segmentation.train import train_segmentation


def _load(weights: bytes | Path, recipe: SegmentationRecipe, labels: Sequence[str]) -> nn.Module:
    return load_model(weights, recipe, num_classes=output_channels(recipe, len(labels)))


def _evaluate(
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    split: str,
    labels: Sequence[str],
    recipe: SegmentationRecipe,
) -> dict[str, Any]:
    return evaluate_segmentation(model, manifest, fetch, split=split, labels=labels, recipe=recipe)


def prediction_from_output(
    out: np.ndarray, recipe: SegmentationRecipe, labels: Sequence[str]
) -> Prediction:
    """Shapes, counts and arrays from one image's probabilities (see `predict_outputs`)."""
    if recipe.mode == "binary":
        masks = out > 0.5
        label_map = np.where(masks.any(0), out.argmax(0) + 1, 0).astype(np.uint8)
        probs = uncertainty_probs(out)
        return Prediction(
            shapes=list(masks_to_shapes(masks, labels)),
            counts=counts_from_masks(masks, labels),
            confidence=float(probs.max(axis=0).mean()),
            arrays={"probs": probs, "label_probs": out, "label_map": label_map},
        )
    if recipe.mode == "instance":
        inst, classes = instances_from_probs(out, len(labels))
        return Prediction(
            shapes=instance_shapes(inst, classes, labels),
            counts=counts_from_instances(classes, labels),
            confidence=float(out.max(axis=0).mean()),
            arrays={"probs": out, "instances": inst, "label_map": semantic_map(inst, classes)},
        )
    label_map = probs_to_label_map(out)
    return Prediction(
        shapes=list(label_map_to_shapes(label_map, labels)),
        counts=counts_from_label_map(label_map, labels),
        confidence=float(out.max(axis=0).mean()),
        arrays={"probs": out, "label_map": label_map},
    )


def _predict(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    recipe: SegmentationRecipe,
    labels: Sequence[str],
) -> list[Prediction]:
    outputs = predict_outputs(model, list(images), recipe)
    return [prediction_from_output(out, recipe, labels) for out in outputs]


def _views(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    recipe: SegmentationRecipe,
    labels: Sequence[str],
    mode: PassMode,
    passes: int,
) -> list[list[View]]:
    """Per image, one View per pass with the same arrays layout as a prediction's "probs"
    (and "label_probs" in binary mode)."""
    binary = recipe.mode == "binary"
    stacks = predict_prob_views(
        model,
        list(images),
        recipe.batch_size,
        activation="sigmoid" if binary else "softmax",
        mode=mode,
        passes=passes,
        scale=recipe.input_scale,
    )
    if binary:
        return [
            [View({"probs": uncertainty_probs(p), "label_probs": p}) for p in st] for st in stacks
        ]
    return [[View({"probs": p}) for p in st] for st in stacks]


def _embed(model: nn.Module, images: Sequence[np.ndarray], *, recipe: SegmentationRecipe):
    return embed_images(model, list(images), recipe.batch_size, scale=recipe.input_scale)


KIND = ModelKind(
    task="segmentation",
    recipe_cls=SegmentationRecipe,
    primary_metric="mean_dice",
    train=train_segmentation,
    load=_load,
    evaluate=_evaluate,
    predict=_predict,
    default_scoring="entropy_mean",
    views=_views,
    embed=_embed,
)
