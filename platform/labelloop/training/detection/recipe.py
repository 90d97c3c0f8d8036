"""The detection recipe: backbone, neck, assignment, loss weights, thresholds, augmentation.

Defaults are set for blood smears at 416 px (BCCD: 640x480 fields, RBCs ~65 px, platelets
~25 px and WBCs ~120 px once letterboxed), trained from scratch on a few hundred images.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from labelloop.training.backbones import timm_encoder
from labelloop.training.recipe import LATER_OPTIONAL, Augment, BaseRecipe

IouLossName = Literal["ciou", "giou"]

# Chosen by measurement (see network.py): the fastest forward and backward on one CPU
# thread among those that learn well from scratch on ~200 images.
DEFAULT_ENCODER = "regnetx_002"
# The image and its quarter turn: on two BCCD detectors and one of synthetic smears, 2
# views gave validation mAP@0.5 +0.002 to +0.008 over one (test +0.005 to +0.007) and
# tighter boxes, at 1.1-1.7x the prediction time; 4 and 8 gained no more mAP@0.5 for
# 1.6-5.6x on synthetic and BCCD fields (benchmarks/detection_tta.py, BENCHMARKS.md).
DEFAULT_TTA_VIEWS = 2
# Training input side while mosaic is on, as a share of image_size (progressive resizing):
# a step at 320 px cost 0.63x one at 416 on one CPU thread (benchmarks/detection_step.py).
DEFAULT_MOSAIC_SCALE = 0.75


def _default_augment() -> Augment:
    # Strong scale jitter and colour jitter, as YOLO-style training from scratch needs on a
    # few hundred images; smears have no up or down, so flips and 90-degree turns are free.
    return Augment(scale=0.5, hue_shift=8, saturation_shift=30, brightness_contrast=0.25, blur=0.05)


class DetectionRecipe(BaseRecipe):
    """A one-stage anchor-free detector (timm backbone + PAN neck + decoupled head)."""

    later_optional: ClassVar[frozenset[str]] = LATER_OPTIONAL | {"neck_growth"}

    task: Literal["detection"] = "detection"
    encoder: str = DEFAULT_ENCODER
    image_size: int = Field(416, ge=64, le=2048, description="letterboxed square input side")
    # BCCD, 30 CPU-minutes: batch 8 (twice the steps) was level with 16 on test over four
    # seeds (+0.0002 ± 0.0057 mAP@0.5) and below it on validation (BENCHMARKS.md).
    batch_size: int = Field(16, ge=1, le=1024)
    # 50 epochs of `repeats` 2: the 100 passes over the training images of the earlier
    # 100 epochs of 1, validated half as often.
    epochs: int = Field(50, ge=1, le=10_000)
    # BCCD, 8 epochs from scratch: test mAP@0.5 0.743 at 4e-3, 0.732 at 2e-3; 30 minutes
    # (43 epochs), one side-by-side pair: 0.9148 at 4e-3, 0.9137 at 6e-3 (BENCHMARKS.md).
    lr: float = Field(4e-3, gt=0, le=1.0)
    # AdamW (decoupled) decay; 0.05 gave test mAP@0.5 +0.0036 ± 0.0063 and validation
    # +0.0043 ± 0.0072 over six BCCD pairs (1.4-1.5 standard errors), +0.0099 ± 0.0105
    # test over five synthetic-smear pairs: short of 2 standard errors, so not the
    # default (BENCHMARKS.md).
    weight_decay: float = Field(5e-4, ge=0, description="on conv/linear weights only")
    augment: Augment = Field(default_factory=_default_augment)
    # Times each training image is drawn per epoch: longer epochs on tiny datasets keep
    # per-epoch validation and checkpointing a small share of the run. 2 against 1, side
    # by side at the same seed and 30 minutes: BCCD test mAP@0.5 +0.0046 ± 0.0032 over
    # three pairs (all higher, 2.5 standard errors; best validation -0.0064 ± 0.0118, a
    # maximum over half as many readings), synthetic smears in 10 minutes +0.031 ± 0.029
    # over three (+0.044 / +0.052 at 62-63 epochs, -0.002 at 100; BENCHMARKS.md). In all
    # 30 BCCD runs at close_mosaic 0.3 the kept epoch came after mosaic went off, so the
    # validations given up had never chosen the model.
    repeats: int = Field(2, ge=1, le=1000)

    # Network.
    # 96 against 64, side by side at the same seed, 30 CPU-minutes on BCCD: test mAP@0.5
    # +0.0039 ± 0.0039 over three pairs (all higher; best validation +0.0045), RBC count
    # MAE lower in all three, for 10 % fewer epochs; synthetic smears, one pair: +0.006
    # (BENCHMARKS.md).
    neck_channels: int = Field(96, ge=8, le=512, description="PAN width at stride 8")
    # Width factor per coarser level: stride 16 gets neck_channels x growth, stride 32 x
    # growth^2 (2 from 64 is YOLOv8n's 64 / 128 / 256). The coarse levels hold a quarter and
    # a sixteenth of the grid points, so widening them costs far less than widening all.
    # Unset (None) is 1, every level alike, and keeps the recipe hash of earlier runs and
    # the shape of the networks they stored.
    neck_growth: float | None = Field(None, ge=1.0, le=4.0)
    neck_depth: int = Field(1, ge=1, le=4, description="bottlenecks per PAN block")
    head_channels: int = Field(64, ge=8, le=512)
    # Distribution focal loss bins per box side (0: direct distance regression instead).
    reg_max: int = Field(16, ge=0, le=64)

    # Task-aligned assignment (TOOD / YOLOv8): metric = score^alpha * IoU^beta.
    tal_topk: int = Field(10, ge=1, le=100)
    tal_alpha: float = Field(0.5, ge=0.0, le=10.0)
    tal_beta: float = Field(6.0, ge=0.0, le=20.0)

    # Loss.
    iou_loss: IouLossName = "ciou"
    box_loss_weight: float = Field(7.5, ge=0.0)
    cls_loss_weight: float = Field(0.5, ge=0.0)
    dfl_loss_weight: float = Field(1.5, ge=0.0)

    # Exponential moving average of the weights, which validation and the saved model use
    # (None: the raw weights). The decay ramps up as decay * (1 - exp(-updates / ema_tau)).
    ema_decay: float | None = Field(0.9999, gt=0.0, lt=1.0)
    ema_tau: float = Field(500.0, gt=0.0)

    # Mosaic (four images in one) for most of the run, off for the final `close_mosaic`
    # fraction of the budget so the model ends on images that look like real fields.
    # Validation rises mostly once mosaic is off: on BCCD, 0.3 against 0.15, paired by
    # seed, gave test mAP@0.5 +0.028 / +0.007 / +0.006 where 30 minutes fit 33-35 epochs and
    # -0.001 / +0.007 where they fit 115-121, -0.006 / +0.018 at 70-77 (where 0.15 can
    # keep a best epoch from the mosaic phase: seed 3's came at epoch 30 of 70) and +0.010 /
    # +0.002 at 67-70; +0.008 ± 0.010 over the nine pairs (BENCHMARKS.md).
    mosaic: float = Field(1.0, ge=0.0, le=1.0, description="probability per training sample")
    close_mosaic: float = Field(0.3, ge=0.0, le=1.0)
    # Input side while mosaic is on (progressive resizing): the mosaic phase trains on
    # smaller inputs, so more of its steps fit the budget, and the closing phase and every
    # prediction use image_size. Unset (None): DEFAULT_MOSAIC_SCALE of image_size (320 at
    # 416); image_size trains at one size throughout. On BCCD in 30 CPU-minutes 320
    # against 416 gave test mAP@0.5 +0.0092 ± 0.0016 over three pairs (all higher; best
    # validation +0.0013 ± 0.0030) from 1.4x the epochs; synthetic smears in 10 minutes,
    # 192 against 256: +0.019 ± 0.007 over two (BENCHMARKS.md, "Progressive resizing").
    mosaic_image_size: int | None = Field(None, ge=32, le=2048)
    translate: float = Field(0.1, ge=0.0, le=0.5, description="random shift, fraction of size")

    # Inference.
    score_threshold: float = Field(0.25, ge=0.0, le=1.0, description="kept boxes and counts")
    # Per class score threshold for kept boxes and counts (classes not named use
    # score_threshold). With `tune_count_thresholds` a run chooses them on the validation
    # split (the threshold whose count MAE per image is lowest) and the model version
    # stores them in its recipe: a crowded class (RBC) and a rare one (WBC) rarely share
    # the threshold at which their counts come out right.
    count_thresholds: dict[str, float] = Field(default_factory=dict)
    tune_count_thresholds: bool = True
    eval_score_threshold: float = Field(0.001, ge=0.0, le=1.0, description="boxes for mAP")
    nms_iou: float = Field(0.6, gt=0.0, le=1.0)
    max_detections: int = Field(300, ge=1, le=10_000)
    # Test-time augmentation: each image is seen in this many of its eight flipped /
    # turned views, and every grid point's class scores and box are averaged over them
    # before NMS (1: the image as it is). Costs that many forward passes wherever the
    # model predicts (evaluation, counts, pre-annotations, pool scores), never in
    # training's per-epoch validation. Unset (None) means DEFAULT_TTA_VIEWS, and keeps
    # the recipe hash of runs made before the field existed.
    tta_views: int | None = Field(None, ge=1, le=8)

    @property
    def views(self) -> int:
        """The number of test-time views in force."""
        return self.tta_views if self.tta_views is not None else DEFAULT_TTA_VIEWS

    @property
    def growth(self) -> float:
        """The neck's width factor per coarser level in force (unset: 1, every level alike)."""
        return self.neck_growth if self.neck_growth is not None else 1.0

    @property
    def mosaic_side(self) -> int:
        """The training input side while mosaic is on (unset: DEFAULT_MOSAIC_SCALE of
        image_size, a multiple of 32; image_size where no closing phase follows)."""
        if self.mosaic_image_size is not None:
            return self.mosaic_image_size
        if self.close_mosaic <= 0:
            return self.image_size
        return max(32, round(self.image_size * DEFAULT_MOSAIC_SCALE / 32) * 32)

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        return timm_encoder(name)

    @model_validator(mode="after")
    def _consistent(self) -> DetectionRecipe:
        for name in ("image_size", "mosaic_image_size"):
            side = getattr(self, name)
            if side is not None and side % 32:
                raise ValueError(f"{name} must be a multiple of 32, got {side}")
        if self.mosaic_side != self.image_size and self.close_mosaic <= 0:
            raise ValueError(
                "mosaic_image_size needs close_mosaic > 0: the closing phase is where the "
                "network trains at image_size"
            )
        if 0 < self.reg_max < 4:
            raise ValueError(f"reg_max must be 0 (no DFL) or at least 4, got {self.reg_max}")
        if self.eval_score_threshold > self.score_threshold:
            raise ValueError("eval_score_threshold must not exceed score_threshold")
        bad = {k: v for k, v in self.count_thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"count_thresholds must lie in [0, 1], got {bad}")
        return self
