"""Loading saved weights safely and predicting full-resolution probabilities.

Every mode's network gives logits; `predict_probs` turns them into softmax (multiclass,
instance) or sigmoid (binary) probabilities at each image's own size, optionally averaged
over the 8 flips and rotations of the image (test-time augmentation).
"""

from __future__ import annotations

import io
import pickle
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from labelloop.errors import ConfigError, InputError
from labelloop.training.passes import DIHEDRAL, mc_dropout, unmap_probs
from labelloop.training.recipe import Recipe
from labelloop.training.segmentation.data import STRIDE, pad_to_stride, resize_image, to_input
from labelloop.training.segmentation.network import build_network, channels_last_on_cpu


def load_state_dict(weights: bytes | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict with weights_only=True: tensors and plain containers only, so a
    tampered weights file cannot run code when it is opened."""
    name = str(weights) if isinstance(weights, Path) else "<weights bytes>"
    source = weights if isinstance(weights, Path) else io.BytesIO(weights)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise InputError(f"not a plain weights file (state_dict): {exc}", file=name) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError("weights file does not hold a state_dict of tensors", file=name)
    return state


def load_model(weights: bytes | Path, recipe: Recipe, num_classes: int) -> nn.Module:
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
    _check_images(images)
    device = next(model.parameters()).device
    inputs = [resize_image(img, scale) for img in images]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for idx, img in enumerate(inputs):
        groups[_padded(img.shape[:2])].append(idx)
    out: list[np.ndarray | None] = [None] * len(images)
    was_training = model.training
    model.eval()
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
    try:
        with torch.inference_mode(), mc_dropout(model, hint) if mode == "mc" else nullcontext():
            for idxs in groups.values():
                for start in range(0, len(idxs), batch_size):
                    chunk = idxs[start : start + batch_size]
                    x = np.stack([to_input(pad_to_stride(inputs[i])) for i in chunk])
                    probs = forward(torch.from_numpy(x).to(device)).float().cpu().numpy()
                    for j, i in enumerate(chunk):
                        h, w = inputs[i].shape[:2]
                        out[i] = np.stack(
                            [_resize_probs(p[:, :h, :w], images[i].shape[:2]) for p in probs[:, j]]
                        )
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def embed_images(
    model: nn.Module, images: Sequence[np.ndarray], batch_size: int = 8, *, scale: float = 1.0
) -> np.ndarray:
    """(N, D) float32: the encoder's deepest feature map averaged over space, per image.
    What diversity selection compares: images the encoder sees alike sit close."""
    _check_images(images)
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ConfigError("this network has no `encoder` to take embeddings from")
    device = next(model.parameters()).device
    inputs = [resize_image(img, scale) for img in images]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for idx, img in enumerate(inputs):
        groups[_padded(img.shape[:2])].append(idx)
    out: list[np.ndarray | None] = [None] * len(images)
    was_training = model.training
    model.eval()
    fmt = torch.channels_last if channels_last_on_cpu(model, device) else torch.contiguous_format
    try:
        with torch.inference_mode():
            for idxs in groups.values():
                for start in range(0, len(idxs), batch_size):
                    chunk = idxs[start : start + batch_size]
                    x = np.stack([to_input(pad_to_stride(inputs[i])) for i in chunk])
                    x_t = torch.from_numpy(x).to(device).contiguous(memory_format=fmt)
                    deepest = encoder(x_t)[-1].float().mean(dim=(-2, -1)).cpu().numpy()
                    for j, i in enumerate(chunk):
                        out[i] = deepest[j]
    finally:
        model.train(was_training)
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _check_images(images: Sequence[np.ndarray]) -> None:
    for idx, img in enumerate(images):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(
                f"image {idx} must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}"
            )


def _resize_probs(probs: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) bilinear; a convex mix, so softmax outputs still sum to 1."""
    if probs.shape[1:] == tuple(size):
        return np.ascontiguousarray(probs)
    hwc = cv2.resize(probs.transpose(1, 2, 0), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(hwc.reshape(size[0], size[1], -1).transpose(2, 0, 1))


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    return logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=1)


def predict_outputs(
    model: nn.Module, images: Sequence[np.ndarray], recipe: Recipe
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
