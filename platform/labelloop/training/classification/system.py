"""The classifier's training system: cross-entropy, validation macro-F1 and accuracy, and
optionally a moving average of the weights (`ema_decay`) as what is validated and kept,
and mixup / CutMix batches (`mixup_alpha`, `cutmix_alpha`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from labelloop.training.classification.evaluate import scores_from_confusion
from labelloop.training.classification.mixing import mix_batch
from labelloop.training.classification.recipe import DEFAULT_EMA_TAU, ClassificationRecipe
from labelloop.training.harness import BudgetedSystem


class ClassificationSystem(BudgetedSystem):
    """Trains `network` (logits over len(labels) classes).

    Logs train_loss, val_loss, val_acc, val_macro_f1 (the monitored metric: with one
    common class, accuracy would reward ignoring the rare ones) and val_f1_<label>.
    """

    def __init__(
        self,
        network: nn.Module,
        recipe: ClassificationRecipe,
        labels: Sequence[str],
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.average_weights(network, recipe.ema_decay, recipe.ema_tau or DEFAULT_EMA_TAU)
        self.recipe = recipe
        self.labels = list(labels)
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)
        self.val_cm = MulticlassConfusionMatrix(len(self.labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        mixed = mix_batch(x, y, self.recipe.mixup_alpha, self.recipe.cutmix_alpha)
        logits = self.trained(mixed.x)
        loss = self.loss_fn(logits, mixed.y_a)
        if mixed.lam < 1.0:
            loss = mixed.lam * loss + (1.0 - mixed.lam) * self.loss_fn(logits, mixed.y_b)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y), on_epoch=True, batch_size=len(x))
        self.val_cm.update(logits.argmax(1), y)

    def on_validation_epoch_end(self) -> None:
        cm = self.val_cm.compute().cpu().numpy()
        self.val_cm.reset()
        scores = scores_from_confusion(cm, self.labels)
        self.log("val_macro_f1", scores["macro_f1"] or 0.0, prog_bar=True)
        self.log("val_acc", scores["accuracy"] or 0.0, prog_bar=True)
        for name, c in scores["per_class"].items():
            if c["f1"] is not None:
                self.log(f"val_f1_{name}", c["f1"])
