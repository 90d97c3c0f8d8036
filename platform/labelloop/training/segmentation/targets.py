"""How a training target reads as per-label foreground, for every output mode: one
place, so that validation metrics and loss terms agree on what the truth is."""

from __future__ import annotations

import torch

from labelloop.training.segmentation.data import IGNORE_INDEX


def label_truth(
    target: torch.Tensor, mode: str, n_labels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """True foreground per label, (B, L, H, W) bool, and the valid (non-padding) pixels,
    (B, 1, H, W). Binary targets are (B, L, H, W) 0/1; softmax modes' are (B, H, W)
    class indices, where instance mode's interior (1..L) and contour (L+1..2L) classes
    both count as their label. Padding is never foreground."""
    if mode == "binary":
        return target == 1, (target != IGNORE_INDEX).all(dim=1, keepdim=True)
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    truth = torch.where(valid[:, 0], target, 0)
    if mode == "instance":
        truth = torch.where(truth > n_labels, truth - n_labels, truth)
    ids = torch.arange(1, n_labels + 1, device=target.device).view(1, -1, 1, 1)
    return truth.unsqueeze(1) == ids, valid
