"""Extra passes and embeddings for detection: what the multi-pass and diversity strategies
read. Kept apart from `predict.py`, which is the plain inference path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from labelloop.errors import ConfigError
from labelloop.training.common import inference, inputs_to_tensor
from labelloop.training.detection.data import letterbox_matrix, warp
from labelloop.training.detection.predict import Detections, detect, to_prediction
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.kind import PassMode, View
from labelloop.training.passes import DIHEDRAL, transform_image, unmap_boxes


def detection_views(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    recipe: DetectionRecipe,
    labels: Sequence[str],
    mode: PassMode,
    passes: int,
) -> list[list[View]]:
    """The 7 flipped / turned views of each image (identity excluded: that is the plain
    prediction), detected and mapped back into the image's frame."""
    if mode != "tta":
        raise ConfigError(
            "the detector has no dropout, so it has no Monte-Carlo passes; use a TTA method "
            "(tta_localisation, count_variance)"
        )
    out: list[list[View]] = [[] for _ in images]
    recipe = recipe.model_copy(update={"tta_views": 1})  # each view one pass, not several
    for flip, k in DIHEDRAL[1 : 1 + passes]:
        turned = [transform_image(img, flip, k) for img in images]
        for i, (img, det) in enumerate(
            zip(images, detect(model, turned, recipe, labels=labels), strict=True)
        ):
            back = Detections(
                boxes=unmap_boxes(det.boxes, flip, k, img.shape[:2]),
                scores=det.scores,
                labels=det.labels,
                class_probs=det.class_probs,
            )
            pred = to_prediction(back, labels)
            out[i].append(View(pred.arrays, pred.counts))
    return out


def detection_embed(
    model: nn.Module, images: Sequence[np.ndarray], *, recipe: DetectionRecipe
) -> np.ndarray:
    """(N, D): the backbone's deepest (stride 32) features averaged over the letterboxed
    image."""
    size, bs = recipe.image_size, recipe.batch_size
    feats: list[np.ndarray] = []
    with inference(model):
        for start in range(0, len(images), bs):
            chunk = images[start : start + bs]
            x = inputs_to_tensor(
                [warp(img, letterbox_matrix(img.shape[:2], size), size) for img in chunk]
            )
            x_t = x.contiguous(memory_format=torch.channels_last)
            deepest = model.backbone(x_t)[-1].float().mean(dim=(-2, -1))
            feats.extend(deepest.cpu().numpy())
    return np.stack(feats).astype(np.float32) if feats else np.zeros((0, 0), np.float32)
