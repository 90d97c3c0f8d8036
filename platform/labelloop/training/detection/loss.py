"""Detection loss: BCE on IoU-aware class targets + IoU loss on boxes (+ DFL on distances).

All three are normalised by the sum of the class targets, as in YOLOv8, so images with
many well-aligned boxes do not drown out images with few; box terms are weighted per
point by its class target, so well-aligned points steer the box regression most.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from labelloop.training.detection.assigner import assign
from labelloop.training.detection.network import DetOutput, decode_at, decode_boxes
from labelloop.training.detection.recipe import DetectionRecipe


def dfl_loss(box_raw: torch.Tensor, target_dist: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss per point (N,): cross-entropy towards the two bins either
    side of each target distance (in stride units), weighted by proximity."""
    logits = box_raw.reshape(-1, reg_max)
    t = target_dist.reshape(-1).clamp(0, reg_max - 1 - 0.01)
    left = t.floor().long()
    w_right = t - left
    loss = (
        F.cross_entropy(logits, left, reduction="none") * (1 - w_right)
        + F.cross_entropy(logits, left + 1, reduction="none") * w_right
    )
    return loss.view(-1, 4).mean(-1)


class DetectionLoss(nn.Module):
    def __init__(self, recipe: DetectionRecipe):
        super().__init__()
        self.recipe = recipe
        self.iou_loss = (
            complete_box_iou_loss if recipe.iou_loss == "ciou" else generalized_box_iou_loss
        )

    def forward(
        self,
        out: DetOutput,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Total and per-part losses for a batch; gt_* padded to (B, M) / (B, M, 4)."""
        r = self.recipe
        cls_logits = out.cls_logits.float()
        with torch.no_grad():  # every point's box for the assignment; gradients at fg only
            pred_boxes = decode_boxes(out, r.reg_max).float()
        target = assign(
            cls_logits.detach().sigmoid(),
            pred_boxes,
            out.points,
            gt_labels,
            gt_boxes.float(),
            gt_mask,
            topk=r.tal_topk,
            alpha=r.tal_alpha,
            beta=r.tal_beta,
        )
        norm = target.scores.sum().clamp(min=1.0)
        cls = F.binary_cross_entropy_with_logits(cls_logits, target.scores, reduction="sum") / norm

        fg = target.foreground
        zero = cls_logits.sum() * 0.0
        box, dfl = zero, zero
        if bool(fg.any()):
            weight = target.scores.sum(-1)[fg]
            tb = target.boxes[fg]
            raw = out.box_raw[fg]
            pts = out.points.expand(fg.shape[0], -1, -1)[fg]
            strides = out.strides.expand(fg.shape[0], -1, -1)[fg]
            fg_boxes = decode_at(raw, pts, strides, r.reg_max).float()
            box = (self.iou_loss(fg_boxes, tb, reduction="none") * weight).sum() / norm
            if r.reg_max:
                dist = torch.cat([pts - tb[:, :2], tb[:, 2:] - pts], -1) / strides
                dfl = (dfl_loss(raw.float(), dist, r.reg_max) * weight).sum() / norm
        total = r.box_loss_weight * box + r.cls_loss_weight * cls + r.dfl_loss_weight * dfl
        return {"loss": total, "box": box.detach(), "cls": cls.detach(), "dfl": dfl.detach()}
