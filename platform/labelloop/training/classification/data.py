"""From a frozen manifest to classifier samples: whole images or crops around cells.

Every image is decoded once and its samples are cut once, up front, at the recipe's input
size; only the small crops stay in memory (a few thousand 64 px crops are tens of MB where
the source images would be hundreds). Samples are made per split from that split's images
only, so a cell never lands in another split than the image it was cut from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from labelloop.errors import ConfigError, InputError
from labelloop.geometry import shape_bbox
from labelloop.training.classification.recipe import ClassificationRecipe
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

BBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
Window = tuple[int, int, int, int]
# Shapes with an area: each becomes one crop. Tags and keypoints have none.
REGION_KINDS = frozenset({"box", "polygon", "mask", "ellipse"})


def classification_labels(manifest: dict[str, Any]) -> list[str]:
    return manifest_labels(manifest, "classification", at_least=2)


def crop_window(bbox: BBox, margin: float, width: int, height: int) -> tuple[Window, Window]:
    """The square window around a box and that window clipped to the image.

    The window is centred on the box, its side the box's longer side plus `margin` of it on
    every side; squares keep a cell's aspect ratio when resized. Returns (window, clipped)
    as integer (x0, y0, x1, y1); the clipped window is empty when the box is off-image.
    """
    x0, y0, x1, y1 = bbox
    side = max(1, round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    wx0 = math.floor((x0 + x1) / 2 - side / 2 + 0.5)
    wy0 = math.floor((y0 + y1) / 2 - side / 2 + 0.5)
    window = (wx0, wy0, wx0 + side, wy0 + side)
    clipped = (max(wx0, 0), max(wy0, 0), min(wx0 + side, width), min(wy0 + side, height))
    return window, clipped


def cut_crop(image: np.ndarray, bbox: BBox, margin: float, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 crop around `bbox`; the part of the window outside the image
    is filled by reflection (not black), so a cell at the border stays centred and in scale.
    Raises ValueError when the box does not overlap the image."""
    h, w = image.shape[:2]
    window, (cx0, cy0, cx1, cy1) = crop_window(bbox, margin, w, h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"box {tuple(round(v, 1) for v in bbox)} lies outside the {w}x{h} image")
    crop = image[cy0:cy1, cx0:cx1]
    pads = (cy0 - window[1], window[3] - cy1, cx0 - window[0], window[2] - cx1)
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, borderType=cv2.BORDER_REFLECT_101)
    if crop.shape[0] != size:
        shrink = crop.shape[0] > size
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=interp)
    return np.ascontiguousarray(crop)


def whole_image(image: np.ndarray, size: int) -> np.ndarray:
    """A whole image as one input: padded to a square by reflection, then resized."""
    h, w = image.shape[:2]
    return cut_crop(image, (0.0, 0.0, float(w), float(h)), 0.0, size)


@dataclass
class SampleSet:
    """Inputs of one split, cut once: crops (N, S, S, 3) uint8 with their class index and
    the image each was cut from."""

    crops: np.ndarray
    targets: np.ndarray  # (N,) int64
    image_ids: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)


def _wanted_kinds(recipe: ClassificationRecipe) -> frozenset[str]:
    return frozenset({"tag"}) if recipe.source == "image" else REGION_KINDS


def item_samples(
    item: dict[str, Any], image: np.ndarray, labels: Sequence[str], recipe: ClassificationRecipe
) -> list[tuple[np.ndarray, int]]:
    """The (input, class index) samples of one decoded manifest item."""
    index = {name: i for i, name in enumerate(labels)}
    where = {"file": item.get("blob_key"), "record": item_record(item)}
    shapes = item_shapes(item)
    wanted = _wanted_kinds(recipe)
    used = [(i, s) for i, s in enumerate(shapes) if s.kind in wanted]
    for i, shape in used:
        if shape.label not in index:
            known = list(labels)
            raise InputError(f"shape {i}: label {shape.label!r} is not one of {known}", **where)
    if recipe.source == "image":
        tags = {s.label for _, s in used}
        if len(tags) > 1:
            raise InputError(f"image has several class tags {sorted(tags)}; one expected", **where)
        if not tags:
            return []  # not labelled for classification
        return [(whole_image(image, recipe.image_size), index[tags.pop()])]
    out = []
    for i, shape in used:
        bbox = shape_bbox(shape)
        if bbox is None or bbox[2] - bbox[0] <= 0 or bbox[3] - bbox[1] <= 0:
            raise InputError(f"shape {i} ({shape.label}) has no area", **where)
        try:
            crop = cut_crop(image, bbox, recipe.crop_margin, recipe.image_size)
        except ValueError as exc:
            raise InputError(f"shape {i} ({shape.label}): {exc}", **where) from exc
        out.append((crop, index[shape.label]))
    return out


def load_samples(
    items: Sequence[dict[str, Any]],
    labels: Sequence[str],
    recipe: ClassificationRecipe,
    fetch: Fetch,
) -> SampleSet:
    """Decode each item once and cut all its samples; the decoded image is then dropped."""
    size = recipe.image_size
    crops: list[np.ndarray] = []
    targets: list[int] = []
    image_ids: list[Any] = []
    wanted = _wanted_kinds(recipe)
    for item in items:
        if not any(s.get("kind") in wanted for s in item.get("shapes") or []):
            continue  # nothing to learn from: do not spend time decoding it
        image = load_image(item, fetch)
        for crop, target in item_samples(item, image, labels, recipe):
            crops.append(crop)
            targets.append(target)
            image_ids.append(item.get("image_id"))
    stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return SampleSet(stacked, np.asarray(targets, np.int64), image_ids)


def build_train_transform(recipe: ClassificationRecipe) -> A.Compose:
    """A small zoom/shift, then flips, right-angle turns, stain and brightness jitter, blur."""
    aug = recipe.augment
    geometry: list[A.BasicTransform] = []
    if aug.enabled and aug.scale > 0:
        geometry.append(
            A.Affine(
                scale=(1 - aug.scale, 1 + aug.scale),
                translate_percent=(-aug.scale / 2, aug.scale / 2),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            )
        )
    return train_transform(
        recipe,
        geometry=geometry,
        blur=lambda p: A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 1.0), p=p),
    )


class ClassificationDataset(AugmentedDataset):
    """Samples of one split; with `transform` (training) each access is re-augmented."""

    def __init__(self, samples: SampleSet, transform: A.Compose | None = None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.samples.crops[idx]
        if self.transform is not None:
            crop = self.transform(image=crop)["image"]
        target = torch.tensor(self.samples.targets[idx], dtype=torch.int64)
        return torch.from_numpy(to_input(crop)), target


class ClassificationDataModule(ManifestDataModule):
    """Train/val loaders over a frozen classification (or detection-style) manifest."""

    # A last batch of one sample breaks batch norm in training.
    drop_last_train = True
    recipe: ClassificationRecipe
    train_set: ClassificationDataset | None
    val_set: ClassificationDataset | None

    def __init__(self, manifest: dict[str, Any], recipe: ClassificationRecipe, fetch: Fetch):
        super().__init__(manifest, recipe, fetch, classification_labels(manifest))

    def _samples(self, split: str) -> SampleSet:
        return load_samples(split_items(self.manifest, split), self.labels, self.recipe, self.fetch)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            samples = self._samples("train")
            if not len(samples):
                what = "class tags" if self.recipe.source == "image" else "boxes or outlines"
                raise ConfigError(f"manifest has no training samples ({what} in split 'train')")
            self.train_set = ClassificationDataset(samples, build_train_transform(self.recipe))
        if self.val_set is None:
            self.val_set = ClassificationDataset(self._samples("val"))

    def has_val(self) -> bool:
        """Whether the val split has samples: its images may carry nothing to classify."""
        self.setup("fit")
        assert self.val_set is not None
        return len(self.val_set) > 0

    def class_counts(self) -> np.ndarray:
        self.setup("fit")
        assert self.train_set is not None
        return np.bincount(self.train_set.samples.targets, minlength=self.num_classes)

    def class_weights(self) -> np.ndarray | None:
        """Cross-entropy weights for balance="loss" (1/sqrt(frequency), mean sample weight
        1); None otherwise."""
        if self.recipe.balance != "loss":
            return None
        self.setup("fit")
        assert self.train_set is not None
        return balanced_class_weights([self.train_set.samples.targets], self.num_classes)

    def train_sampler(self) -> WeightedRandomSampler | None:
        """With balance="sampler", samples drawn with probability 1/class frequency."""
        if self.recipe.balance != "sampler":
            return None
        assert self.train_set is not None
        counts = self.class_counts().astype(np.float64)
        per_sample = 1.0 / counts[self.train_set.samples.targets]
        gen = torch.Generator().manual_seed(self.recipe.seed)
        return WeightedRandomSampler(
            per_sample.tolist(), len(self.train_set), replacement=True, generator=gen
        )
