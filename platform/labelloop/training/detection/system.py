"""The detection system: TAL loss, weight EMA, mosaic schedule and val mAP around a Detector.

`self.network` is what validation scores and the harness saves: the exponential moving
average of the trained weights (`BudgetedSystem.average_weights`) when the recipe enables
EMA, as YOLO-style detectors do for their validation numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from labelloop.training.detection.loss import DetectionLoss
from labelloop.training.detection.predict import postprocess
from labelloop.training.detection.recipe import DetectionRecipe
from labelloop.training.harness import BudgetedSystem, lr_factor

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
GRAD_CLIP_NORM = 10.0


# COCO's detection limits per image. pycocotools computes mAP@0.5:0.95 (and every
# per-class AP) at exactly 100 detections whatever the list says, and reports -1 when 100
# is not in it, so the list stays COCO's: predictions beyond 100 per image and class are
# not scored (COCO evaluates each image and class apart; BCCD fields hold at most ~60
# cells).
COCO_MAX_DETECTIONS = [1, 10, 100]


def map_metric(**kwargs: Any) -> MeanAveragePrecision:
    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        backend="pycocotools",
        max_detection_thresholds=COCO_MAX_DETECTIONS,
        **kwargs,
    )
    metric.warn_on_many_detections = False  # expected at a 0.001 score threshold
    return metric


class DetectionSystem(BudgetedSystem):
    """Logs train_loss (and its box/cls/dfl parts), val_map50 (the monitor) and val_map."""

    def __init__(self, network: nn.Module, recipe: DetectionRecipe, labels: Sequence[str]):
        super().__init__()
        self.recipe = recipe
        self.labels = list(labels)
        self.average_weights(network, recipe.ema_decay, recipe.ema_tau)
        self.loss_fn = DetectionLoss(recipe)
        self.val_map = map_metric()

    def forward(self, x: torch.Tensor) -> Any:
        return self.network(x)

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        train_set = getattr(dm, "train_set", None)
        if train_set is not None:
            closing = self._progress() >= 1.0 - self.recipe.close_mosaic
            train_set.set_mosaic(not closing)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, boxes, classes, mask = batch
        parts = self.loss_fn(self.trained(images), classes, boxes, mask)
        n = len(images)
        self.log(
            "train_loss", parts["loss"], on_step=False, on_epoch=True, prog_bar=True, batch_size=n
        )
        for name in ("box", "cls", "dfl"):
            self.log(f"train_{name}", parts[name], on_step=False, on_epoch=True, batch_size=n)
        return parts["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, boxes, classes, mask = batch
        dets = postprocess(
            self.network(images), self.recipe, self.recipe.eval_score_threshold, multi_label=True
        )
        targets = [
            {"boxes": b[m], "labels": c[m]} for b, c, m in zip(boxes, classes, mask, strict=True)
        ]
        preds = [{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets]
        self.val_map.update(preds, targets)

    def on_validation_epoch_end(self) -> None:
        result = self.val_map.compute()
        self.val_map.reset()
        self.log("val_map50", result["map_50"].clamp(min=0.0), prog_bar=True)
        self.log("val_map", result["map"].clamp(min=0.0))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW/SGD with weight decay on conv/linear weights only (not on norms and biases,
        where it only fights the normalisation), LR scheduled over the budget."""
        r = self.recipe
        decay, no_decay = [], []
        for p in self.trained.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": r.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if r.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=r.lr, momentum=0.937, nesterov=True
            )
        else:
            opt = torch.optim.AdamW(groups, lr=r.lr, betas=(0.937, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda _step: lr_factor(self._progress(), r.scheduler)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Any = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """Clip the gradient norm: early TAL targets are tiny and a few batches with many
        boxes can otherwise throw freshly initialised BatchNorm layers off."""
        self.clip_gradients(
            optimizer, gradient_clip_val=GRAD_CLIP_NORM, gradient_clip_algorithm="norm"
        )
