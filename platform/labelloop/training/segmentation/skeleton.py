"""Skeleton recall: a loss term that asks the network to cover the centre line of every
annotated structure (Kirchhoff et al., ECCV 2024, "Skeleton Recall Loss").

Why: Dice and cross-entropy count pixels, so a faint membrane a few pixels wide that the
network leaves out costs little, although it merges two cells. The term is one minus the
share of the truth's skeleton (thinned to one pixel, then widened to three: a "tube")
that the predicted probabilities cover, per label, so a gap anywhere along a thin
structure costs as much as its length, whatever its width. Off unless a recipe sets
`skeleton_recall` (its weight).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize
from torch import nn

from labelloop.training.segmentation.targets import label_truth

# A 3x3 cross: widens the one-pixel skeleton to a tube without rounding its ends.
_TUBE = ndimage.generate_binary_structure(2, 1)


def tubed_skeleton(mask: np.ndarray) -> np.ndarray:
    """The skeleton of a 2-D bool mask, dilated by one pixel (a cross) and kept inside it."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    return ndimage.binary_dilation(skeletonize(mask), _TUBE) & mask


def label_foreground(
    logits: torch.Tensor, target: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per label, the predicted probability of foreground and the true foreground:
    (B, L, H, W) float and bool. Instance mode's interior and contour classes both count
    as their label; padding is never foreground (`targets.label_truth`)."""
    if mode == "binary":
        return torch.sigmoid(logits), label_truth(target, mode, logits.shape[1])[0]
    probs = logits.softmax(1)[:, 1:]
    if mode == "instance":
        n = probs.shape[1] // 2
        probs = probs[:, :n] + probs[:, n:]
    return probs, label_truth(target, mode, probs.shape[1])[0]


class SkeletonRecallLoss(nn.Module):
    """weight x (1 - covered share of the truth's tubed skeleton), over the batch, averaged
    over the labels that have any skeleton in it (0 when none has)."""

    def __init__(self, weight: float, mode: str):
        super().__init__()
        self.weight = float(weight)
        self.mode = mode

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, truth = label_foreground(logits, target, self.mode)
        masks = truth.cpu().numpy()
        tubes = np.zeros_like(masks)
        for b in range(masks.shape[0]):
            for lab in range(masks.shape[1]):
                tubes[b, lab] = tubed_skeleton(masks[b, lab])
        tube = torch.from_numpy(tubes).to(probs.device, probs.dtype)
        length = tube.sum((0, 2, 3))
        present = length > 0
        if not bool(present.any()):
            return logits.sum() * 0.0
        recall = (probs * tube).sum((0, 2, 3))[present] / length[present]
        return self.weight * (1.0 - recall.mean())
