"""From a frozen manifest to letterboxed detection batches, with mosaic and box-aware jitter.

Every image is decoded once and kept in memory with its boxes (polygons, masks and
ellipses count as their bounding boxes). Geometry is one affine warp per image from the
original pixels straight to the network's square input (letterbox, scale jitter, shift,
mosaic placement composed into one matrix), so images are interpolated once and the
inverse mapping of boxes is exact. Flips, 90-degree turns, stain/brightness jitter and
blur follow in albumentations, which moves the boxes with the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from labelloop.domain import Keypoint, Tag
from labelloop.errors import InputError
from labelloop.geometry import shape_bbox
from labelloop.training.common import (
    AugmentedDataset,
    Fetch,
    ManifestDataModule,
    item_record,
    item_shapes,
    load_image,
    manifest_labels,
    split_items,
    to_input,
    train_transform,
)
from labelloop.training.detection.recipe import DetectionRecipe

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image (H,W,3) uint8, boxes (N,4), classes (N,)

FILL = 114  # letterbox grey, as YOLO pads
# A box cut by a crop or the image border is kept while this much of its area is visible.
MIN_VISIBLE = 0.25
MIN_SIDE = 2.0  # px, in network input pixels


def item_boxes(item: dict[str, Any], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) float32 xyxy (clipped to the image) and class indices (N,) of an item."""
    index = {name: i for i, name in enumerate(labels)}
    w, h = item.get("width"), item.get("height")
    boxes, classes = [], []
    for shape in item_shapes(item):
        if isinstance(shape, Tag | Keypoint):
            continue
        if shape.label not in index:
            raise InputError(
                f"label {shape.label!r} is not one of the manifest labels {list(labels)}",
                file=item.get("blob_key"),
                record=item_record(item),
            )
        bbox = shape_bbox(shape)
        if bbox is None:
            continue
        x0, y0, x1, y1 = bbox
        if w and h:
            x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
            y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        boxes.append((x0, y0, x1, y1))
        classes.append(index[shape.label])
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def load_sample(item: dict[str, Any], labels: Sequence[str], fetch: Fetch) -> Sample:
    image = load_image(item, fetch)
    boxes, classes = item_boxes(item, labels)
    return image, boxes, classes


def letterbox_matrix(hw: tuple[int, int], size: int) -> np.ndarray:
    """2x3 affine: the whole image scaled to fit `size` x `size`, centred."""
    h, w = hw
    r = size / max(h, w)
    return np.array([[r, 0, (size - w * r) / 2], [0, r, (size - h * r) / 2]], np.float64)


def warp(image: np.ndarray, m: np.ndarray, size: int, dst: np.ndarray | None = None) -> np.ndarray:
    """Warp into a `size` square; onto `dst` (pixels outside the image left as they are)."""
    if dst is None:
        return cv2.warpAffine(
            image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(FILL, FILL, FILL)
        )
    cv2.warpAffine(
        image, m, (size, size), dst=dst, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT
    )
    return dst


def map_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a scale + shift affine (no rotation) to xyxy boxes."""
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = out[:, [0, 2]] * m[0, 0] + m[0, 2]
    out[:, [1, 3]] = out[:, [1, 3]] * m[1, 1] + m[1, 2]
    return out.astype(np.float32)


def unmap_boxes(boxes: np.ndarray, m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Inverse of `map_boxes`, clipped to the original (h, w) image."""
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - m[0, 2]) / m[0, 0]).clip(0, hw[1])
    out[:, [1, 3]] = ((out[:, [1, 3]] - m[1, 2]) / m[1, 1]).clip(0, hw[0])
    return out.astype(np.float32)


def clip_boxes(
    boxes: np.ndarray, classes: np.ndarray, size: int, limits: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the canvas (and to `limits`, xyxy per box); drop mostly hidden or tiny boxes."""
    if not len(boxes):
        return boxes, classes
    x0, y0, x1, y1 = (0.0, 0.0, float(size), float(size))
    if limits is not None:
        x0, y0 = max(x0, float(limits[0])), max(y0, float(limits[1]))
        x1, y1 = min(x1, float(limits[2])), min(y1, float(limits[3]))
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(x0, x1)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(y0, y1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (w > MIN_SIDE) & (h > MIN_SIDE) & (w * h >= MIN_VISIBLE * np.maximum(area, 1e-6))
    return clipped[keep], classes[keep]


def build_pixel_transform(recipe: DetectionRecipe) -> A.Compose:
    """Flips, 90-degree turns, stain/brightness jitter and blur, moving boxes along (the
    geometry before them is the letterbox / mosaic warp)."""
    return train_transform(
        recipe,
        blur=lambda p: A.Blur(blur_limit=(3, 5), p=p),
        value_shift=20,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["classes"], clip=True),
    )


class DetectionDataset(AugmentedDataset):
    """Items of one split, decoded once. Training draws mosaics / jittered letterboxes
    (`train=True`); evaluation returns the plain letterbox. Each access yields
    (image (3, S, S) float32, boxes (N, 4) float32 in input pixels, classes (N,) int64)."""

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        labels: Sequence[str],
        fetch: Fetch,
        recipe: DetectionRecipe,
        *,
        train: bool = False,
    ):
        self.items = list(items)
        self.recipe = recipe
        self.train = train
        self.size = recipe.image_size
        self.samples = [load_sample(it, labels, fetch) for it in self.items]
        self.repeats = recipe.repeats if train else 1
        self.transform = build_pixel_transform(recipe) if train and recipe.augment.enabled else None
        self.rng = np.random.default_rng(recipe.seed)
        # Shared memory, so switching mosaic off near the end reaches loader workers too.
        self.mosaic_on = torch.ones(1).share_memory_()

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        super().reseed(seed)

    def set_mosaic(self, on: bool) -> None:
        self.mosaic_on.fill_(1.0 if on else 0.0)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx %= len(self.samples)
        if not self.train:
            image, boxes, classes = self.samples[idx]
            m = letterbox_matrix(image.shape[:2], self.size)
            canvas, boxes = warp(image, m, self.size), map_boxes(boxes, m)
        else:
            canvas, boxes, classes = self._train_sample(idx)
        return (
            torch.from_numpy(to_input(canvas)),
            torch.from_numpy(np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)),
            torch.from_numpy(np.ascontiguousarray(classes, np.int64)),
        )

    def _jitter(self, size: int) -> tuple[float, np.ndarray]:
        r, rng = self.recipe, self.rng
        a = r.augment.scale if r.augment.enabled else 0.0
        gain = rng.uniform(1 - a, 1 + a)
        shift = rng.uniform(-r.translate, r.translate, 2) * size if r.augment.enabled else 0
        return gain, np.zeros(2) + shift

    def _train_sample(self, idx: int) -> Sample:
        # One read of the shared switch decides both the side and whether mosaics are drawn.
        r, phase = self.recipe, float(self.mosaic_on) > 0
        s = r.mosaic_side if phase else self.size
        gain, shift = self._jitter(s)
        canvas = np.full((s, s, 3), FILL, np.uint8)
        use_mosaic = phase and self.rng.random() < r.mosaic
        if use_mosaic:
            # Four images around a random centre of a 2S canvas (each letterboxed to S),
            # then the canvas centre region at scale `gain` becomes the S x S input.
            others = self.rng.integers(0, len(self.samples), 3)
            xc, yc = self.rng.uniform(0.5 * s, 1.5 * s, 2)
            all_boxes, all_classes = [], []
            for k, j in enumerate([idx, *others.tolist()]):
                image, boxes, classes = self.samples[j]
                h, w = image.shape[:2]
                fit = s / max(h, w)
                ox = xc - w * fit if k in (0, 2) else xc
                oy = yc - h * fit if k in (0, 1) else yc
                m = np.array(
                    [
                        [gain * fit, 0, gain * (ox - s) + s / 2 + shift[0]],
                        [0, gain * fit, gain * (oy - s) + s / 2 + shift[1]],
                    ]
                )
                warp(image, m, s, dst=canvas)
                extent = map_boxes(np.array([[0, 0, w, h]], np.float32), m)[0]
                b, c = clip_boxes(map_boxes(boxes, m), classes, s, limits=extent)
                all_boxes.append(b)
                all_classes.append(c)
            boxes, classes = np.concatenate(all_boxes), np.concatenate(all_classes)
        else:
            image, boxes, classes = self.samples[idx]
            m = letterbox_matrix(image.shape[:2], s)
            m[:, :2] *= gain
            m[:, 2] = (m[:, 2] - s / 2) * gain + s / 2 + shift
            warp(image, m, s, dst=canvas)
            boxes, classes = clip_boxes(map_boxes(boxes, m), classes, s)
        if self.transform is not None:
            out = self.transform(image=canvas, bboxes=boxes, classes=classes)
            canvas = out["image"]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            classes = np.asarray(out["classes"], np.int64)
        return canvas, boxes, classes


def _pad_to(image: torch.Tensor, side: int) -> torch.Tensor:
    if image.shape[-1] == side:
        return image
    grey = torch.from_numpy(to_input(np.full((1, 1, 3), FILL, np.uint8)))
    out = grey.expand(3, side, side).clone()
    out[:, : image.shape[1], : image.shape[2]] = image
    return out


def collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (B, 3, S, S); boxes padded to (B, M, 4), classes (B, M) and mask (B, M).

    Images of different sides (loader workers that drew a batch across the switch from
    the mosaic side to `image_size`) are padded right and below with the letterbox
    grey to the largest, which leaves their boxes where they are."""
    side = max(b[0].shape[-1] for b in batch)
    images = torch.stack([_pad_to(b[0], side) for b in batch])
    m = max(1, *(len(b[1]) for b in batch))
    boxes = torch.zeros(len(batch), m, 4)
    classes = torch.zeros(len(batch), m, dtype=torch.long)
    mask = torch.zeros(len(batch), m, dtype=torch.bool)
    for i, (_, b, c) in enumerate(batch):
        boxes[i, : len(b)] = b
        classes[i, : len(c)] = c
        mask[i, : len(b)] = True
    return images, boxes, classes, mask


class DetectionDataModule(ManifestDataModule):
    """Train/val loaders over a frozen detection manifest."""

    collate_fn = staticmethod(collate)
    recipe: DetectionRecipe
    train_set: DetectionDataset | None
    val_set: DetectionDataset | None

    def __init__(self, manifest: dict[str, Any], recipe: DetectionRecipe, fetch: Fetch):
        super().__init__(manifest, recipe, fetch, manifest_labels(manifest, "detection"))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = DetectionDataset(
                self.train_items(), self.labels, self.fetch, self.recipe, train=True
            )
        if self.val_set is None:
            self.val_set = DetectionDataset(
                split_items(self.manifest, "val"), self.labels, self.fetch, self.recipe
            )
