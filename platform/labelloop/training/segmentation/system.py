"""The training system: loss, validation metrics and optimiser around a plain network."""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from labelloop.errors import ConfigError
from labelloop.training.harness import BudgetedSystem
from labelloop.training.segmentation.data import IGNORE_INDEX
from labelloop.training.segmentation.network import channels_last_on_cpu
from labelloop.training.segmentation.recipe import MODE_LOSSES, SegmentationRecipe
from labelloop.training.segmentation.skeleton import SkeletonRecallLoss
from labelloop.training.segmentation.targets import label_truth


class _ComboLoss(nn.Module):
    def __init__(self, parts: Sequence[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(p(logits, target) for p in self.parts)  # type: ignore[return-value]


class _MaskedSigmoidLoss(nn.Module):
    """BCE (optionally with a positive weight per label) or sigmoid focal loss over
    (B, L, H, W) logits and 0/1 targets, averaged over pixels that are not padding."""

    def __init__(self, focal: bool, pos_weight: Sequence[float] | None = None):
        super().__init__()
        self.focal = focal
        pw = None if pos_weight is None else torch.tensor(list(pos_weight), dtype=torch.float32)
        self.register_buffer("pos_weight", pw, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = (target != IGNORE_INDEX).to(logits.dtype)
        truth = (target == 1).to(logits.dtype)
        if self.focal:
            loss = sigmoid_focal_loss(logits, truth, alpha=-1, gamma=2.0, reduction="none")
        else:
            pw = self.pos_weight.view(1, -1, 1, 1) if self.pos_weight is not None else None
            loss = F.binary_cross_entropy_with_logits(
                logits, truth, pos_weight=pw, reduction="none"
            )
        return (loss * valid).sum() / valid.sum().clamp_min(1.0)


def build_loss(
    name: str,
    class_weights: Sequence[float] | None = None,
    mode: str = "multiclass",
    skeleton_recall: float | None = None,
) -> nn.Module:
    """Dice counters class imbalance once a class is predicted at all; CE/focal (optionally
    class-weighted) give the gradient that gets it predicted: Dice's gradient vanishes
    while a class's probability is near 0. Padding (IGNORE_INDEX) is skipped.

    Softmax modes (multiclass, instance) take (B, H, W) class indices and per-class
    weights; binary mode takes (B, L, H, W) 0/1 targets and per-label positive weights
    (BCE only: focal loss does its own balancing). `skeleton_recall`, when set, adds
    that weight of `SkeletonRecallLoss`."""
    if name not in MODE_LOSSES.get(mode, ()):
        valid = ", ".join(MODE_LOSSES.get(mode, ())) or "none"
        raise ConfigError(f"loss {name!r} does not fit mode {mode!r}; valid: {valid}")
    extra: list[nn.Module] = (
        [] if not skeleton_recall else [SkeletonRecallLoss(skeleton_recall, mode)]
    )
    if mode == "binary":
        dice: nn.Module = smp.losses.DiceLoss(
            "multilabel", from_logits=True, ignore_index=IGNORE_INDEX
        )
        bce = _MaskedSigmoidLoss(focal=False, pos_weight=class_weights)
        focal: nn.Module = _MaskedSigmoidLoss(focal=True)
        sigmoid_parts = {"bce": [bce], "focal": [focal]}
        sigmoid_parts |= {"dice_bce": [dice, bce], "dice_focal": [dice, focal]}
        return _ComboLoss(sigmoid_parts[name] + extra)
    weight = (
        None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
    )
    ce = nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE_INDEX)
    dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE_INDEX)
    focal = smp.losses.FocalLoss(
        "multiclass",
        ignore_index=IGNORE_INDEX,
        class_weights=list(class_weights) if class_weights is not None else None,
    )
    parts = {"ce": [ce], "focal": [focal], "dice_ce": [dice, ce], "dice_focal": [dice, focal]}
    return _ComboLoss(parts[name] + extra)


def label_masks(
    logits: torch.Tensor, target: torch.Tensor, mode: str, n_labels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted and true foreground per label, (B, L, H, W) bool, and the valid
    (non-padding) pixels (B, 1, H, W). Instance mode's interior and contour classes both
    count as their label's foreground (`targets.label_truth`)."""
    truth, valid = label_truth(target, mode, n_labels)
    if mode == "binary":
        return logits > 0, truth, valid
    pred = logits.argmax(1)
    if mode == "instance":
        pred = torch.where(pred > n_labels, pred - n_labels, pred)
    ids = torch.arange(1, n_labels + 1, device=logits.device).view(1, -1, 1, 1)
    return pred.unsqueeze(1) == ids, truth, valid


class SegmentationSystem(BudgetedSystem):
    """Trains `network` (an nn.Module producing logits, channels per the recipe's mode).

    Logs train_loss, val_loss, val_dice / val_iou / val_pixel_error (means over labels)
    and val_dice_<label>. Dice and IoU are micro over all val pixels, per label (0 when a
    label is absent from both prediction and truth); pixel error is the fraction of valid
    pixels whose foreground-vs-background decision for the label is wrong.
    """

    def __init__(
        self,
        network: nn.Module,
        recipe: SegmentationRecipe,
        labels: Sequence[str],
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.network = network
        self.recipe = recipe
        self.labels = list(labels)
        self.loss_fn = build_loss(recipe.loss, class_weights, recipe.mode, recipe.skeleton_recall)
        self._tally = torch.zeros(5, len(self.labels), dtype=torch.float64)

    def on_fit_start(self) -> None:
        self._channels_last = channels_last_on_cpu(self.network, self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        # Losses in float32 even under bf16 autocast (Dice sums many small terms).
        loss = self.loss_fn(self(x).float(), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x).float()
        self.log("val_loss", self.loss_fn(logits, y), on_epoch=True, batch_size=len(x))
        pred, truth, valid = label_masks(logits, y, self.recipe.mode, len(self.labels))
        pred, truth = pred & valid, truth & valid
        dims = (0, 2, 3)
        tp = (pred & truth).sum(dims)
        fp = (pred & ~truth).sum(dims)
        fn = (~pred & truth).sum(dims)
        n_valid = valid.sum().expand_as(tp)
        self._tally += torch.stack([tp, fp, fn, fp + fn, n_valid]).double().cpu()

    def on_validation_epoch_end(self) -> None:
        tp, fp, fn, err, n_valid = self._tally
        self._tally = torch.zeros_like(self._tally)
        dice = torch.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), 0.0)
        iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn).clamp_min(1), 0.0)
        self.log("val_dice", dice.mean().float(), prog_bar=True)
        self.log("val_iou", iou.mean().float())
        self.log("val_pixel_error", (err / n_valid.clamp_min(1)).mean().float())
        for i, name in enumerate(self.labels):
            self.log(f"val_dice_{name}", dice[i].float())
