"""Extra passes and embeddings for whole-image classifiers (what multi-pass scoring and
diversity selection read). Cell-crop classifiers need the cells' boxes and are refused,
as in `predict`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from labelloop.errors import ConfigError
from labelloop.training.classification.data import whole_image
from labelloop.training.classification.evaluate import predict_sample_probs
from labelloop.training.classification.recipe import ClassificationRecipe
from labelloop.training.common import inference, inputs_to_tensor
from labelloop.training.kind import PassMode, View
from labelloop.training.passes import DIHEDRAL, mc_dropout, transform_image


def _inputs(images: Sequence[np.ndarray], recipe: ClassificationRecipe) -> np.ndarray:
    if recipe.source != "image":
        raise ConfigError(
            "this classifier was trained on cell crops (source: crops); whole-image scoring "
            "and embeddings need a `source: image` classifier"
        )
    return np.stack([whole_image(img, recipe.image_size) for img in images])


def classification_views(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    recipe: ClassificationRecipe,
    labels: Sequence[str],
    mode: PassMode,
    passes: int,
) -> list[list[View]]:
    """Per image, `passes` Monte-Carlo dropout passes ("mc") or its 8 flips / turns
    ("tta"), each as class probabilities (C,)."""
    if not images:
        return []
    if mode == "tta":
        per_view = [
            predict_sample_probs(
                model,
                _inputs([transform_image(i, f, k) for i in images], recipe),
                recipe.batch_size,
            )
            for f, k in DIHEDRAL[:passes]
        ]
    else:
        x = _inputs(images, recipe)
        hint = "train with `drop_rate` > 0 in the classification recipe"
        with mc_dropout(model, hint):
            per_view = [_probs_keep_mode(model, x, recipe.batch_size) for _ in range(passes)]
    return [
        [View({"probs": pv[i].astype(np.float32)}, _one_hot(labels, pv[i])) for pv in per_view]
        for i in range(len(images))
    ]


def _probs_keep_mode(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax (N, C) without touching the model's train/eval modes (MC dropout set them)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            t = inputs_to_tensor(x[start : start + batch_size]).to(_device(model))
            out.append(model(t).softmax(dim=1).float().cpu().numpy())
    return np.concatenate(out)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _one_hot(labels: Sequence[str], probs: np.ndarray) -> dict[str, int]:
    top = int(probs.argmax())
    return {name: int(i == top) for i, name in enumerate(labels)}


def classification_embed(
    model: nn.Module, images: Sequence[np.ndarray], *, recipe: ClassificationRecipe
) -> np.ndarray:
    """(N, D): the backbone's pooled features before the classifier (timm's pre-logits)."""
    if not images:
        return np.zeros((0, 0), np.float32)
    x = _inputs(images, recipe)
    feats = []
    with inference(model):
        for start in range(0, len(x), recipe.batch_size):
            t = inputs_to_tensor(x[start : start + recipe.batch_size]).to(_device(model))
            pooled = model.forward_head(model.forward_features(t), pre_logits=True)
            feats.append(pooled.float().reshape(len(t), -1).cpu().numpy())
    return np.concatenate(feats).astype(np.float32)
