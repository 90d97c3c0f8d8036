"""Loading a saved network and predicting full-resolution probabilities and shapes.

Every mode's network gives logits; `predict_probs` turns them into softmax (multiclass,
instance) or sigmoid (binary) probabilities at each image's own size, optionally averaged
over the 8 flips and rotations of the image (test-time augmentation); `predict_segmentation`
reads them as shapes, counts and arrays.

What a prediction holds depends on the recipe's mode:
- multiclass: one Mask per connected region, counts of connected regions; "probs" is the
  softmax (L + 1, H, W) and "label_map" its argmax.
- binary: one Mask per connected region of each label's mask (labels may overlap);
  "label_probs" is the sigmoid (L, H, W); "probs" is (2, H, W), [1 - q, q] with q the
  least certain label's probability at each pixel (see `uncertainty_probs`), so
  the softmax uncertainty scorers apply unchanged; "label_map" gives each pixel the most
  likely label above 0.5.
- instance: one Mask per watershed instance and counts of instances, so touching cells
  count separately; "probs" is the softmax (1 + 2L, H, W) over background / interiors /
  contours, "instances" the instance map and "label_map" the label map it implies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from labelloop.errors import ConfigError
from labelloop.objects import (
    counts_from_instances,
    counts_from_label_map,
    counts_from_masks,
    instance_shapes,
    label_map_to_shapes,
    masks_to_shapes,
    probs_to_label_map,
)
from labelloop.training.common import check_images, inference, inputs_to_tensor, load_state_dict
from labelloop.training.kind import Prediction
from labelloop.training.passes import DIHEDRAL, mc_dropout, unmap_probs
from labelloop.training.segmentation.data import STRIDE, pad_to_stride, resize_image
from labelloop.training.segmentation.instances import instances_from_probs, semantic_map
from labelloop.training.segmentation.network import build_network, channels_last_on_cpu
from labelloop.training.segmentation.recipe import SegmentationRecipe


def load_model(weights: bytes | Path, recipe: SegmentationRecipe, num_classes: int) -> nn.Module:
    """The recipe's network with saved weights, in eval mode on CPU."""
    state = load_state_dict(weights)
    model = build_network(recipe, num_classes, pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"weights do not fit {recipe.arch}/{recipe.encoder} with {num_classes} classes: {exc}"
        ) from exc
    return model.eval()


def predict_probs(
    model: nn.Module,
    images: Sequence[np.ndarray],
    batch_size: int = 8,
    *,
    activation: str = "softmax",
    tta: bool = False,
    scale: float = 1.0,
) -> list[np.ndarray]:
    """Probabilities (C, H, W) float32 for each RGB uint8 image, at its own size: softmax
    over channels, or an independent sigmoid per channel with activation="sigmoid".

    Images are padded (reflected) to a multiple of 32 and the output cropped back; images
    of equal padded size share batches. `tta` averages the probabilities of the 8 flips
    and quarter turns of each image (each mapped back), at 8 times the cost. With `scale`
    below 1 the network sees the image resized by that factor (as in training with
    `input_scale`) and its probabilities are resized back bilinearly.
    """
    views = predict_prob_views(
        model,
        images,
        batch_size,
        activation=activation,
        mode="tta" if tta else "plain",
        scale=scale,
    )
    return [v.mean(axis=0) if tta else v[0] for v in views]


def predict_prob_views(
    model: nn.Module,
    images: Sequence[np.ndarray],
    batch_size: int = 8,
    *,
    activation: str = "softmax",
    mode: str = "plain",
    passes: int = 8,
    scale: float = 1.0,
) -> list[np.ndarray]:
    """Per image (T, C, H, W) float32 probabilities of T passes at the image's own size:
    "plain" (T = 1), "tta" (the 8 flips / quarter turns, each mapped back) or "mc"
    (`passes` Monte-Carlo dropout passes; the network must have dropout)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
    if mode not in ("plain", "tta", "mc"):
        raise ValueError(f"mode must be plain, tta or mc, got {mode!r}")
    check_images(images)
    device = next(model.parameters()).device
    inputs = [resize_image(img, scale) for img in images]
    out: list[np.ndarray | None] = [None] * len(images)
    channels_last = channels_last_on_cpu(model, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def run(inp: torch.Tensor) -> torch.Tensor:
        return _activate(model(inp.contiguous(memory_format=fmt)), activation)

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (T, B, C, H, W)
        if mode == "tta":
            return torch.stack(
                [
                    unmap_probs(run((x.flip(-1) if f else x).rot90(k, dims=(-2, -1))), f, k)
                    for f, k in DIHEDRAL
                ]
            )
        if mode == "mc":
            return torch.stack([run(x) for _ in range(passes)])
        return run(x)[None]

    hint = "train with `dropout: 0.2` in the segmentation recipe"
    with inference(model), mc_dropout(model, hint) if mode == "mc" else nullcontext():
        for chunk in batches_of_equal_size(inputs, batch_size):
            x = inputs_to_tensor([pad_to_stride(inputs[i]) for i in chunk])
            probs = forward(x.to(device)).float().cpu().numpy()
            for j, i in enumerate(chunk):
                h, w = inputs[i].shape[:2]
                out[i] = np.stack(
                    [_resize_probs(p[:, :h, :w], images[i].shape[:2]) for p in probs[:, j]]
                )
    return out  # type: ignore[return-value]


def batches_of_equal_size(inputs: Sequence[np.ndarray], batch_size: int) -> Iterator[list[int]]:
    """Indices of `inputs` in batches of at most `batch_size` images that pad to one size."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for idx, img in enumerate(inputs):
        groups[_padded(img.shape[:2])].append(idx)
    for idxs in groups.values():
        for start in range(0, len(idxs), batch_size):
            yield idxs[start : start + batch_size]


def _resize_probs(probs: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) bilinear; a convex mix, so softmax outputs still sum to 1."""
    if probs.shape[1:] == tuple(size):
        return np.ascontiguousarray(probs)
    hwc = cv2.resize(probs.transpose(1, 2, 0), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(hwc.reshape(size[0], size[1], -1).transpose(2, 0, 1))


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    return logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=1)


def predict_outputs(
    model: nn.Module, images: Sequence[np.ndarray], recipe: SegmentationRecipe
) -> list[np.ndarray]:
    """The recipe mode's probabilities per image: softmax (C, H, W) for multiclass and
    instance, sigmoid (L, H, W) per label for binary; with the recipe's TTA setting."""
    activation = "sigmoid" if recipe.mode == "binary" else "softmax"
    return predict_probs(
        model,
        list(images),
        batch_size=recipe.batch_size,
        activation=activation,
        tta=recipe.tta,
        scale=recipe.input_scale,
    )


def uncertainty_probs(label_probs: np.ndarray) -> np.ndarray:
    """Binary mode's sigmoid outputs (L, H, W) as a distribution (2, H, W) the softmax
    uncertainty scorers read: [1 - q, q] with q the probability of the least certain label
    at each pixel. With one label this is exactly [1 - p, p]; with several, a pixel is as
    uncertain as its most uncertain label."""
    if label_probs.ndim != 3 or label_probs.shape[0] < 1:
        raise ValueError(f"expected label probabilities (L, H, W), got {label_probs.shape}")
    closest = np.abs(label_probs - 0.5).argmin(axis=0)
    q = np.take_along_axis(label_probs, closest[None], axis=0)[0]
    return np.stack([1.0 - q, q]).astype(np.float32)


def _padded(hw: tuple[int, ...]) -> tuple[int, int]:
    return (-(-hw[0] // STRIDE) * STRIDE, -(-hw[1] // STRIDE) * STRIDE)


def prediction_from_output(
    out: np.ndarray, recipe: SegmentationRecipe, labels: Sequence[str]
) -> Prediction:
    """Shapes, counts and arrays from one image's probabilities (see `predict_outputs`)."""
    if recipe.mode == "binary":
        masks = out > 0.5
        label_map = np.where(masks.any(0), out.argmax(0) + 1, 0).astype(np.uint8)
        probs = uncertainty_probs(out)
        return Prediction(
            shapes=list(masks_to_shapes(masks, labels, label_probs=out)),
            counts=counts_from_masks(masks, labels),
            confidence=float(probs.max(axis=0).mean()),
            arrays={"probs": probs, "label_probs": out, "label_map": label_map},
        )
    if recipe.mode == "instance":
        inst, classes = instances_from_probs(out, len(labels), **recipe.instance_rules(labels))
        return Prediction(
            shapes=instance_shapes(inst, classes, labels, label_probs=_instance_label_probs(out)),
            counts=counts_from_instances(classes, labels),
            confidence=float(out.max(axis=0).mean()),
            arrays={"probs": out, "instances": inst, "label_map": semantic_map(inst, classes)},
        )
    label_map = probs_to_label_map(out)
    return Prediction(
        shapes=list(label_map_to_shapes(label_map, labels, label_probs=out[1:])),
        counts=counts_from_label_map(label_map, labels),
        confidence=float(out.max(axis=0).mean()),
        arrays={"probs": out, "label_map": label_map},
    )


def _instance_label_probs(out: np.ndarray) -> np.ndarray:
    """Per label, interior + contour probability (L, H, W) of an instance-mode softmax."""
    n = (out.shape[0] - 1) // 2
    return out[1 : 1 + n] + out[1 + n :]


def predict_segmentation(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    recipe: SegmentationRecipe,
    labels: Sequence[str],
) -> list[Prediction]:
    """`ModelKind.predict`: shapes, counts and arrays per image (see the module docstring)."""
    outputs = predict_outputs(model, list(images), recipe)
    return [prediction_from_output(out, recipe, labels) for out in outputs]
