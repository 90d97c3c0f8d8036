"""The classification recipe: what a classifier run learns from, and how.

Two sources of samples share one model: `image` (one Tag per image, e.g. a cell image
marked infected or uninfected) and `crops` (every box, polygon or mask of a manifest item
becomes one sample, cut with some context around it). The backbone is any timm model by
name; a typo is refused when the recipe is read, not minutes into a run.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from labelloop.training.backbones import timm_encoder
from labelloop.training.recipe import LATER_OPTIONAL, Augment, BaseRecipe

SourceName = Literal["image", "crops"]
BalanceName = Literal["none", "loss", "sampler"]

# Trains from scratch at a useful speed on two CPU cores (see docs in the benchmark).
DEFAULT_ENCODER = "lcnet_050"
# Flips / quarter turns averaged at evaluation and prediction when a recipe names none.
DEFAULT_TTA_VIEWS = 8
# Steps over which the weight average's decay ramps up when a recipe names none: a few
# epochs of a few thousand crops.
DEFAULT_EMA_TAU = 100.0


def _default_augment() -> Augment:
    # Cells have no up or down and labs differ in stain, not geometry; a light blur stands
    # in for slides scanned slightly out of focus.
    return Augment(blur=0.1)


class ClassificationRecipe(BaseRecipe):
    """A timm classifier over whole images or over crops around annotated cells."""

    later_optional: ClassVar[frozenset[str]] = LATER_OPTIONAL | {
        "ema_decay",
        "ema_tau",
        "mixup_alpha",
        "cutmix_alpha",
    }

    task: Literal["classification"] = "classification"
    encoder: str = DEFAULT_ENCODER
    source: SourceName = "image"
    # Context added on every side of a crop, as a fraction of the box's longer side: the
    # surroundings (neighbouring RBCs) tell the network the scale a resized crop lost.
    crop_margin: float = Field(0.15, ge=0.0, le=2.0)
    # Small inputs suffice for single cells and keep CPU training fast.
    image_size: int = Field(64, ge=16, le=1024)
    batch_size: int = Field(64, ge=1, le=1024)
    epochs: int = Field(30, ge=1, le=10_000)
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0)
    # Rare classes (WBC, platelets next to thousands of RBCs) would otherwise be ignored:
    # "sampler" draws samples with probability 1/class frequency, "loss" weights the
    # cross-entropy by 1/sqrt(class frequency), "none" trains on the raw distribution.
    balance: BalanceName = "loss"
    drop_rate: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the head")
    augment: Augment = Field(default_factory=_default_augment)
    # Test-time views: the softmax averaged over this many flips / quarter turns at
    # evaluation, calibration and prediction (1 = the image as it is). It changes no
    # weights, so unset (None: DEFAULT_TTA_VIEWS) it stays out of the run's hash.
    tta_views: int | None = Field(None, ge=1, le=8)
    # Exponential moving average of the weights, which validation and the saved model use
    # (None: the raw weights); its decay ramps up as decay * (1 - exp(-updates / ema_tau))
    # (None: DEFAULT_EMA_TAU steps). See `BudgetedSystem.average_weights`.
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    ema_tau: float | None = Field(None, gt=0.0)
    # Mixup / CutMix: each training batch blended with (mixup) or patched from (CutMix) a
    # shuffled copy of itself, the loss shared between both labels; the mixing weight is
    # drawn from Beta(alpha, alpha). With both set, each batch picks one at even odds.
    # None (the default): off. See `mixing.mix_batch`.
    mixup_alpha: float | None = Field(None, gt=0.0, le=10.0)
    cutmix_alpha: float | None = Field(None, gt=0.0, le=10.0)

    @property
    def views(self) -> int:
        """The number of test-time views in force."""
        return self.tta_views if self.tta_views is not None else DEFAULT_TTA_VIEWS

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        return timm_encoder(name)
