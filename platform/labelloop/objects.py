"""From a model's per-pixel output to what people use: cell counts and editable regions.

Semantic output (a label map, or one mask per label) is counted as connected components
of each class, which is how a cell count is read off a semantic segmentation; touching
cells of one class merge, so such counts are exact for separated cells and a lower bound
otherwise. Instance output (an instance map from watershed, see
`training.instances`) is counted one per instance, touching cells included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from labelloop.domain import Mask
from labelloop.geometry import instance_count, mask_shape

DEFAULT_MIN_AREA = 4  # pixels; smaller blobs are argmax noise, not cells


def probs_to_label_map(probs: np.ndarray) -> np.ndarray:
    """Softmax probabilities (C, H, W) -> uint8 label map (H, W), 0 = background."""
    if probs.ndim != 3:
        raise ValueError(f"expected probabilities of shape (C, H, W), got {probs.shape}")
    return probs.argmax(axis=0).astype(np.uint8)


def counts_from_label_map(
    label_map: np.ndarray, labels: Sequence[str], min_area: int = DEFAULT_MIN_AREA
) -> dict[str, int]:
    """Instances per label (every label present as a key, 0 when absent)."""
    return {
        name: instance_count(label_map, i, min_area=min_area)
        for i, name in enumerate(labels, start=1)
    }


def counts_from_masks(
    masks: np.ndarray, labels: Sequence[str], min_area: int = DEFAULT_MIN_AREA
) -> dict[str, int]:
    """Connected components per label of per-label masks (L, H, W), which may overlap."""
    _check_masks(masks, labels)
    return {
        name: instance_count(masks[i].astype(np.uint8), 1, min_area=min_area)
        for i, name in enumerate(labels)
    }


def counts_from_instances(classes: np.ndarray, labels: Sequence[str]) -> dict[str, int]:
    """Instances per label from an instance map's classes (classes[0] is background)."""
    per = np.bincount(np.asarray(classes[1:], np.int64), minlength=len(labels) + 1)
    return {name: int(per[i]) for i, name in enumerate(labels, start=1)}


def label_map_to_shapes(
    label_map: np.ndarray,
    labels: Sequence[str],
    *,
    per_instance: bool = True,
    min_area: int = DEFAULT_MIN_AREA,
) -> list[Mask]:
    """Masks for pre-annotation: one per connected region (default), so an annotator can
    delete or relabel a single cell, or one per class present when `per_instance=False`.
    Regions below `min_area` pixels are dropped in both modes."""
    shapes: list[Mask] = []
    for i, name in enumerate(labels, start=1):
        shapes.extend(_region_shapes(label_map == i, name, per_instance, min_area))
    return shapes


def masks_to_shapes(
    masks: np.ndarray,
    labels: Sequence[str],
    *,
    per_instance: bool = True,
    min_area: int = DEFAULT_MIN_AREA,
) -> list[Mask]:
    """`label_map_to_shapes` for per-label masks (L, H, W) that may overlap."""
    _check_masks(masks, labels)
    shapes: list[Mask] = []
    for i, name in enumerate(labels):
        shapes.extend(_region_shapes(masks[i].astype(bool), name, per_instance, min_area))
    return shapes


def instance_shapes(inst: np.ndarray, classes: np.ndarray, labels: Sequence[str]) -> list[Mask]:
    """One mask per instance of an instance map, labelled by its class."""
    shapes: list[Mask] = []
    for i, obj in enumerate(ndimage.find_objects(inst), start=1):
        if obj is None:
            continue
        region = np.zeros(inst.shape, bool)
        region[obj] = inst[obj] == i
        shapes.append(mask_shape(region, labels[int(classes[i]) - 1]))
    return shapes


def _region_shapes(region: np.ndarray, name: str, per_instance: bool, min_area: int) -> list[Mask]:
    if not region.any():
        return []
    comp, n = ndimage.label(region)
    areas = np.bincount(comp.ravel())
    keep = [j for j in range(1, n + 1) if areas[j] >= min_area]
    if not keep:
        return []
    if per_instance:
        return [mask_shape(comp == j, name) for j in keep]
    return [mask_shape(np.isin(comp, keep), name)]


def _check_masks(masks: np.ndarray, labels: Sequence[str]) -> None:
    if masks.ndim != 3 or masks.shape[0] != len(labels):
        raise ValueError(f"expected masks of shape ({len(labels)}, H, W), got {masks.shape}")
