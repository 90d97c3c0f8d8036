"""From a frozen manifest to tensors: decoding, rasterising, augmenting, batching.

Training reads only the manifest and image bytes through a `fetch(blob_key) -> bytes`
callable, so it never touches the database and a run can be repeated from its manifest.
Annotated datasets in this project are small (tens to a few thousand images), so every
image is decoded and rasterised once, up front, and kept in memory: epochs then cost only
augmentation and compute, and a broken image fails the run before any training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from labelloop.domain import Shape
from labelloop.errors import ConfigError, InputError
from labelloop.geometry import rasterize_classes, shape_mask
from labelloop.training.common import (
    AugmentedDataset,
    Fetch,
    ManifestDataModule,
    balanced_class_weights,
    item_record,
    item_shapes,
    load_image,
    manifest_labels,
    split_items,
    to_input,
    train_transform,
)
from labelloop.training.segmentation.instances import (
    REGION_KINDS,
    instance_targets,
    rasterize_instances,
)
from labelloop.training.segmentation.network import output_channels
from labelloop.training.segmentation.recipe import SegmentationRecipe

# Label-map value for pixels that are padding, not image: losses and metrics skip them.
IGNORE_INDEX = 255
# Every encoder in use downsamples by at most 32.
STRIDE = 32


def segmentation_labels(manifest: dict[str, Any]) -> list[str]:
    """The labels of a segmentation manifest; at most 254, so a uint8 label map holds them
    with background and IGNORE_INDEX."""
    labels = manifest_labels(manifest, "segmentation")
    if len(labels) >= IGNORE_INDEX:
        raise ConfigError(f"at most {IGNORE_INDEX - 1} labels fit a uint8 label map")
    return labels


def load_shapes(item: dict[str, Any], fetch: Fetch) -> tuple[np.ndarray, list[Shape]]:
    """Decode one manifest item: RGB uint8 (H, W, 3) and its parsed shapes."""
    return load_image(item, fetch), item_shapes(item)


def load_item(
    item: dict[str, Any],
    labels: Sequence[str],
    fetch: Fetch,
    mode: str = "multiclass",
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one manifest item: RGB uint8 (H, W, 3) and its training target for `mode`
    (see `make_target`; for multiclass the uint8 label map (H, W)), both resized by
    `scale` (see `make_target`)."""
    image, shapes = load_shapes(item, fetch)
    try:
        target = make_target(shapes, labels, *image.shape[:2], mode=mode, scale=scale)
    except ValueError as exc:
        raise InputError(
            f"bad annotation: {exc}", file=item["blob_key"], record=item_record(item)
        ) from exc
    return resize_image(image, scale), target


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Area-averaged downscaling (no aliasing of thin structures); scale 1 is a no-op."""
    if scale == 1.0:
        return image
    h, w = scaled_size(*image.shape[:2], scale)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def rasterize_labels(
    shapes: Sequence[Shape], labels: Sequence[str], height: int, width: int
) -> np.ndarray:
    """Per-label masks (H, W, L) uint8 of region shapes; labels may overlap (binary mode)."""
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((height, width, len(labels)), np.uint8)
    for s in shapes:
        if s.kind not in REGION_KINDS or s.label not in index:
            continue
        m = shape_mask(s, height, width)
        if m is not None:
            out[..., index[s.label]] |= m.astype(np.uint8)
    return out


def make_target(
    shapes: Sequence[Shape],
    labels: Sequence[str],
    height: int,
    width: int,
    *,
    mode: str,
    scale: float = 1.0,
) -> np.ndarray:
    """What the network learns for `mode`: a label map (H, W) for multiclass, per-label 0/1
    masks (H, W, L) for binary, and background / interior / contour classes (H, W) for
    instance (see `training.instances.instance_targets`).

    With `scale` < 1 the target is rasterised at full size and then reduced: each pixel
    takes the label covering most of its area (so thin structures survive), and instance
    contours are drawn after reducing, one pixel wide at the network's scale."""
    size = scaled_size(height, width, scale)
    if mode == "binary":
        masks = rasterize_labels(shapes, labels, height, width)
        return _reduce_onehot(masks, size) if scale != 1.0 else masks
    if mode == "instance":
        inst, classes = rasterize_instances(shapes, labels, height, width)
        if scale != 1.0:
            inst = cv2.resize(inst, size[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        return instance_targets(inst, classes, len(labels))
    label_map = rasterize_classes(shapes, labels, height, width)
    if scale == 1.0:
        return label_map
    onehot = np.eye(len(labels) + 1, dtype=np.uint8)[label_map]
    return _reduce_onehot(onehot, size, argmax=True)


def _reduce_onehot(masks: np.ndarray, size: tuple[int, int], argmax: bool = False) -> np.ndarray:
    """Area-average (H, W, C) 0/1 masks to `size`: per channel >= 0.5 (multi-label), or
    the channel of largest area (one class per pixel) with `argmax`."""
    h, w = size
    frac = np.stack(
        [
            cv2.resize(masks[..., c].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            for c in range(masks.shape[-1])
        ],
        axis=-1,
    )
    if argmax:
        return frac.argmax(axis=-1).astype(np.uint8)
    return (frac >= 0.5).astype(np.uint8)


def pad_to_stride(arr: np.ndarray, *, fill: int | None = None, stride: int = STRIDE) -> np.ndarray:
    """Pad bottom/right so H and W are multiples of `stride`; crop back with [:h, :w].

    Reflection (fill=None) gives the network plausible context at the border; label maps
    are padded with a constant (IGNORE_INDEX) so padding is never scored.
    """
    h, w = arr.shape[:2]
    ph, pw = (-h) % stride, (-w) % stride
    if not (ph or pw):
        return arr
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    if fill is not None:
        return np.pad(arr, pad, mode="constant", constant_values=fill)
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(arr, pad, mode=mode)


def build_train_transform(recipe: SegmentationRecipe) -> A.Compose:
    """Random crop/pad to image_size plus the recipe's augmentations (uint8 in, uint8 out).

    Borders are reflected for image and mask alike, so padded areas are mirrored cells
    with matching labels rather than black squares the network would have to learn.
    """
    size, aug = recipe.image_size, recipe.augment
    reflect = cv2.BORDER_REFLECT_101
    steps: list[A.BasicTransform] = [
        A.PadIfNeeded(min_height=size, min_width=size, border_mode=reflect)
    ]
    if aug.enabled and aug.scale > 0:
        steps.append(A.Affine(scale=(1 - aug.scale, 1 + aug.scale), border_mode=reflect, p=0.5))
    steps.append(A.RandomCrop(height=size, width=size))
    if aug.enabled and recipe.distortion > 0:
        # After the crop, so only the pixels kept are warped: smooth grid warps move
        # membranes by ~8 px, elastic ones add local wiggles of a few pixels.
        steps.append(
            A.OneOf(
                [
                    A.GridDistortion(num_steps=5, distort_limit=0.3, border_mode=reflect),
                    A.ElasticTransform(alpha=300, sigma=12, approximate=True, border_mode=reflect),
                ],
                p=recipe.distortion,
            )
        )
    return train_transform(recipe, geometry=steps)


class SegmentationDataset(AugmentedDataset):
    """Items of one split, decoded once. With `transform` (training) each access draws a
    random crop/augmentation and each image appears `repeats` times per epoch; without it
    (evaluation) the whole image is returned, padded to a multiple of 32 with padding marked
    IGNORE_INDEX in the target. Targets are (H, W) class indices, or (L, H, W) 0/1 masks
    in binary mode."""

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        labels: Sequence[str],
        fetch: Fetch,
        transform: A.Compose | None = None,
        repeats: int = 1,
        mode: str = "multiclass",
        scale: float = 1.0,
    ):
        self.items = list(items)
        self.labels = list(labels)
        self.transform = transform
        self.repeats = repeats
        self.mode = mode
        self.samples = [load_item(it, self.labels, fetch, mode, scale) for it in self.items]

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.samples[idx % len(self.samples)]
        if self.transform is not None:
            out = self.transform(image=image, mask=target)
            image, target = out["image"], out["mask"]
        else:
            image, target = pad_to_stride(image), pad_to_stride(target, fill=IGNORE_INDEX)
        if target.ndim == 3:  # binary: (H, W, L) -> (L, H, W)
            target = target.transpose(2, 0, 1)
        return torch.from_numpy(to_input(image)), torch.from_numpy(target.astype(np.int64))

    def same_size(self) -> bool:
        return len({s[0].shape for s in self.samples}) <= 1


def balanced_pos_weights(targets: Sequence[np.ndarray]) -> np.ndarray:
    """Binary mode's counterpart of `balanced_class_weights`: per label, the ratio of the
    positive to the negative weight, sqrt(negatives / positives) (1 for an absent label).
    `targets` are (H, W, L) masks with 0, 1 and IGNORE_INDEX."""
    n = targets[0].shape[-1] if targets else 0
    pos, neg = np.zeros(n, np.float64), np.zeros(n, np.float64)
    for t in targets:
        flat = t.reshape(-1, n)
        pos += (flat == 1).sum(0)
        neg += (flat == 0).sum(0)
    out = np.ones(n, np.float64)
    both = (pos > 0) & (neg > 0)
    out[both] = np.sqrt(neg[both] / pos[both])
    return out.astype(np.float32)


class SegmentationDataModule(ManifestDataModule):
    """Train/val loaders over a frozen segmentation manifest."""

    recipe: SegmentationRecipe
    train_set: SegmentationDataset | None
    val_set: SegmentationDataset | None

    def __init__(self, manifest: dict[str, Any], recipe: SegmentationRecipe, fetch: Fetch):
        super().__init__(manifest, recipe, fetch, segmentation_labels(manifest))

    @property
    def num_classes(self) -> int:
        """Output channels of the network for the recipe's mode."""
        return output_channels(self.recipe, len(self.labels))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = SegmentationDataset(
                self.train_items(),
                self.labels,
                self.fetch,
                build_train_transform(self.recipe),
                repeats=self.recipe.repeats,
                mode=self.recipe.mode,
                scale=self.recipe.input_scale,
            )
        if self.val_set is None:
            self.val_set = SegmentationDataset(
                split_items(self.manifest, "val"),
                self.labels,
                self.fetch,
                mode=self.recipe.mode,
                scale=self.recipe.input_scale,
            )

    def class_weights(self) -> np.ndarray | None:
        """Loss weights for the recipe's `class_weights` setting (None: unweighted): per
        output class in softmax modes, a positive weight per label in binary mode."""
        if self.recipe.class_weights == "none":
            return None
        self.setup("fit")
        assert self.train_set is not None
        targets = [t for _, t in self.train_set.samples]
        if self.recipe.mode == "binary":
            return balanced_pos_weights(targets)
        return balanced_class_weights(targets, self.num_classes)

    def val_batch_size(self) -> int:
        # Whole images of different sizes cannot share a batch.
        assert self.val_set is not None
        return self.recipe.batch_size if self.val_set.same_size() else 1
