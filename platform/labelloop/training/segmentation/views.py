"""Extra passes and embeddings for segmentation: what the multi-pass and diversity
strategies read. The passes run in `predict.predict_prob_views`, which plain prediction
shares."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from labelloop.errors import ConfigError
from labelloop.training.common import check_images, inference, inputs_to_tensor
from labelloop.training.kind import PassMode, View
from labelloop.training.segmentation.data import pad_to_stride, resize_image
from labelloop.training.segmentation.network import channels_last_on_cpu
from labelloop.training.segmentation.predict import (
    batches_of_equal_size,
    predict_prob_views,
    uncertainty_probs,
)
from labelloop.training.segmentation.recipe import SegmentationRecipe


def segmentation_views(
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


def segmentation_embed(
    model: nn.Module, images: Sequence[np.ndarray], *, recipe: SegmentationRecipe
) -> np.ndarray:
    """`ModelKind.embed`: see `embed_images`."""
    return embed_images(model, list(images), recipe.batch_size, scale=recipe.input_scale)


def embed_images(
    model: nn.Module, images: Sequence[np.ndarray], batch_size: int = 8, *, scale: float = 1.0
) -> np.ndarray:
    """(N, D) float32: the encoder's deepest feature map averaged over space, per image.
    What diversity selection compares: images the encoder sees alike sit close."""
    check_images(images)
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ConfigError("this network has no `encoder` to take embeddings from")
    device = next(model.parameters()).device
    inputs = [resize_image(img, scale) for img in images]
    out: list[np.ndarray | None] = [None] * len(images)
    fmt = torch.channels_last if channels_last_on_cpu(model, device) else torch.contiguous_format
    with inference(model):
        for chunk in batches_of_equal_size(inputs, batch_size):
            x = inputs_to_tensor([pad_to_stride(inputs[i]) for i in chunk])
            x_t = x.to(device).contiguous(memory_format=fmt)
            deepest = encoder(x_t)[-1].float().mean(dim=(-2, -1)).cpu().numpy()
            for j, i in enumerate(chunk):
                out[i] = deepest[j]
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
