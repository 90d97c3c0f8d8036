"""Task-aligned assignment (TOOD, as used by YOLOv8): which grid points learn which box.

For every ground-truth box, the candidates are grid points whose centre lies inside it;
each candidate's alignment is t = s^alpha * u^beta (s: its predicted score for the box's
class, u: IoU of its predicted box with the box). The top-k candidates by t become
positives; a point claimed by several boxes keeps the claimant it overlaps most.
Class targets are normalised per box so its best-aligned point gets that point's best IoU:
classification scores learn to rank boxes by localisation quality (IoU-aware targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

_EPS = 1e-9


@dataclass
class Assignment:
    labels: torch.Tensor  # (B, A) long, class of the assigned box (0 where background)
    boxes: torch.Tensor  # (B, A, 4) xyxy of the assigned box
    scores: torch.Tensor  # (B, A, C) normalised alignment targets (0 for background)
    foreground: torch.Tensor  # (B, A) bool
    gt_index: torch.Tensor  # (B, A) long, index of the assigned box in its image


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """(B, M, A) bool: point a lies strictly inside box m."""
    x, y = points[:, 0], points[:, 1]
    b = boxes.unsqueeze(-1)  # (B, M, 4, 1)
    deltas = torch.stack([x - b[:, :, 0], y - b[:, :, 1], b[:, :, 2] - x, b[:, :, 3] - y], -1)
    return deltas.amin(-1) > eps


@torch.no_grad()
def assign(
    pred_scores: torch.Tensor,
    pred_boxes: torch.Tensor,
    points: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_mask: torch.Tensor,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> Assignment:
    """Assign targets to A points for a batch padded to M boxes per image.

    pred_scores (B, A, C) probabilities; pred_boxes (B, A, 4) and gt_boxes (B, M, 4) xyxy in
    the same pixels; points (A, 2); gt_labels (B, M) long; gt_mask (B, M) bool marks real
    boxes (padding rows are never assigned).
    """
    b, a, c = pred_scores.shape
    m = gt_boxes.shape[1]
    device = pred_scores.device
    if m == 0 or not bool(gt_mask.any()):
        return Assignment(
            labels=torch.zeros(b, a, dtype=torch.long, device=device),
            boxes=torch.zeros(b, a, 4, device=device, dtype=pred_boxes.dtype),
            scores=torch.zeros(b, a, c, device=device, dtype=pred_scores.dtype),
            foreground=torch.zeros(b, a, dtype=torch.bool, device=device),
            gt_index=torch.zeros(b, a, dtype=torch.long, device=device),
        )

    candidates = points_in_boxes(points, gt_boxes) & gt_mask.unsqueeze(-1)  # (B, M, A)
    iou = torch.stack([box_iou(g, p) for g, p in zip(gt_boxes, pred_boxes, strict=True)])
    iou = iou.clamp(min=0) * candidates  # (B, M, A)
    labels = gt_labels.clamp(min=0, max=c - 1)
    score = pred_scores.gather(2, labels.unsqueeze(1).expand(b, a, m)).transpose(1, 2)  # (B,M,A)
    align = score.pow(alpha) * iou.pow(beta) * candidates

    # Top-k candidates per box; ties at zero alignment only count when inside the box.
    k = min(topk, a)
    top = align.topk(k, dim=-1).indices  # (B, M, k)
    positive = torch.zeros_like(candidates).scatter_(-1, top, True) & candidates

    # A point claimed by several boxes keeps the claimant its prediction overlaps most.
    multi = positive.sum(1) > 1  # (B, A)
    if bool(multi.any()):
        best = iou.masked_fill(~positive, -1.0).argmax(1)  # (B, A)
        only_best = torch.zeros_like(positive).scatter_(1, best.unsqueeze(1), True)
        positive = torch.where(multi.unsqueeze(1), only_best, positive)
    foreground = positive.any(1)  # (B, A)
    gt_index = positive.float().argmax(1)  # (B, A)

    batch = torch.arange(b, device=device).unsqueeze(1)
    target_labels = labels[batch, gt_index]  # (B, A)
    target_boxes = gt_boxes[batch, gt_index]  # (B, A, 4)

    # Normalise per box: alignment / max alignment * max IoU over its positives.
    align = align * positive
    max_align = align.amax(-1, keepdim=True)
    max_iou = (iou * positive).amax(-1, keepdim=True)
    norm = (align * max_iou / (max_align + _EPS)).amax(1)  # (B, A)
    target_scores = torch.zeros(b, a, c, device=device, dtype=pred_scores.dtype)
    target_scores.scatter_(2, target_labels.unsqueeze(-1), norm.unsqueeze(-1).to(target_scores))
    target_scores = target_scores * foreground.unsqueeze(-1)
    return Assignment(target_labels, target_boxes, target_scores, foreground, gt_index)
