"""The segmentation recipe: architecture, output mode, loss and crops of a U-Net-family run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from labelloop.objects import DEFAULT_MIN_AREA, EDGE_AREA_SHARE
from labelloop.training.recipe import LATER_OPTIONAL, BaseRecipe

LossName = Literal["dice_ce", "ce", "focal", "dice_focal", "bce", "dice_bce"]
SegmentationMode = Literal["multiclass", "binary", "instance"]

# Decoder widths per encoder depth, used when a recipe sets the depth but not the widths.
# Narrow on purpose: the full-resolution decoder stages dominate CPU time, and cells are
# simple shapes that do not need smp's default (256, 128, 64, 32, 16).
DEFAULT_DECODER_CHANNELS: dict[int, tuple[int, ...]] = {
    3: (64, 32, 16),
    4: (64, 48, 32, 16),
    5: (128, 64, 48, 32, 16),
}

# Losses each output mode can train with: softmax modes take (Dice +) cross-entropy or
# focal; sigmoid (binary) mode takes (Dice +) binary cross-entropy or focal.
MODE_LOSSES: dict[str, tuple[str, ...]] = {
    "multiclass": ("dice_ce", "ce", "focal", "dice_focal"),
    "binary": ("dice_bce", "bce", "focal", "dice_focal"),
    "instance": ("dice_ce", "ce", "focal", "dice_focal"),
}
DEFAULT_LOSS = {"multiclass": "dice_ce", "binary": "dice_bce", "instance": "dice_ce"}


TIMM_PREFIX = "tu-"


def encoder_problem(name: str) -> str | None:
    """Why `name` is not an encoder the network can be built with (a message listing the
    valid choices), or None. Imports are deferred: recipes load without torch."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    if name in get_encoder_names():
        return None
    if name.startswith(TIMM_PREFIX):
        import timm

        if timm.is_model(name.removeprefix(TIMM_PREFIX)):
            return None
        return (
            f"unknown timm encoder {name!r}: {name.removeprefix(TIMM_PREFIX)!r} is not a timm "
            "model (see timm.list_models())"
        )
    return (
        f"unknown encoder {name!r}; valid choices: {', '.join(sorted(get_encoder_names()))}, "
        f"or '{TIMM_PREFIX}<timm model name>'"
    )


class SegmentationRecipe(BaseRecipe):
    """A U-Net-family run (segmentation-models-pytorch).

    `mode` decides what the network outputs and how it is read:
    - "multiclass": softmax over background + labels; one class per pixel.
    - "binary": one sigmoid channel per label; labels may overlap (e.g. EM membranes).
    - "instance": softmax over background, each label's interior and each label's
      contour, so touching cells of one class are split by watershed from the interiors;
      counts are then instances rather than connected blobs.
    """

    later_optional: ClassVar[frozenset[str]] = LATER_OPTIONAL | {
        "full_resolution_branch",
        "skeleton_recall",
    }

    task: Literal["segmentation"] = "segmentation"
    mode: SegmentationMode = "multiclass"
    arch: str = "unet"
    # Depth 3 (stride 8) sees ~100 px of context, enough for blood cells, and kept platelets
    # (a few pixels wide) learnable where deeper, narrower-ending decoders missed them.
    encoder_depth: int = Field(3, ge=3, le=5)
    decoder_channels: tuple[int, ...] | None = (64, 32, 16)
    # Random 128 px crops: four times the optimiser steps per CPU-second of whole 256 px
    # images (Dice on synthetic smears was as good), and cells placed anywhere in the crop.
    # Random crops drawn per training image per epoch: small datasets of large images get
    # epochs long enough that per-epoch validation and checkpointing stay cheap.
    repeats: int = Field(2, ge=1, le=1000)
    # Defaults per mode (DEFAULT_LOSS) when not given; see MODE_LOSSES for valid choices.
    loss: LossName = "dice_ce"
    # "balanced": CE/focal weights from train pixel frequencies (1/sqrt(freq)), so rare small
    # classes such as platelets get learned at all instead of being swamped by background;
    # in binary mode the same ratio becomes each label's BCE positive weight.
    class_weights: Literal["balanced", "none"] = "balanced"
    # Weight of a skeleton-recall term added to the loss (`skeleton.SkeletonRecallLoss`):
    # one minus the share of each label's annotated centre line the prediction covers, so
    # a gap in a thin structure (a faint membrane) costs its length, not its few pixels.
    # Unset (None): no term, and out of the hash like `full_resolution_branch`.
    skeleton_recall: float | None = Field(None, gt=0.0, le=10.0)
    # Probability of an elastic or grid distortion per training crop: the augmentation that
    # matters for thin, wavy structures (EM membranes); smears do without it.
    distortion: float = Field(0.0, ge=0.0, le=1.0)
    # Test-time augmentation: average probabilities over the 8 flips/rotations (8x slower
    # prediction, usually a point or two of Dice on isotropic images).
    tta: bool = False
    # Images (and targets) are resized by this factor before the network, in training and
    # prediction, and probabilities are resized back: 0.5 costs a quarter of the compute
    # per image, for structures that stay a few pixels wide at that scale. `image_size`
    # is the crop size at the reduced scale.
    input_scale: float = Field(1.0, ge=0.1, le=1.0)
    # Channel dropout on the decoder's last features, before the segmentation head. Off by
    # default; > 0 (e.g. 0.2) is what Monte-Carlo dropout scoring (bald, mc_variance)
    # samples from.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Channels of a small convolution branch on the input at full resolution, joined to the
    # decoder's last features before the head (U-Net only). smp's U-Net has no skip at full
    # resolution (its first is at half); on ISBI the branch did not remove the one-pixel
    # fringes along membranes and cost a quarter of the epochs (BENCHMARKS.md). Unset
    # (None): no branch, and out of the hash like `instance_components`.
    full_resolution_branch: int | None = Field(None, ge=4, le=128)
    # Instance mode's reading of the network, per label (labels not named: no split and
    # objects.DEFAULT_MIN_AREA; see `instances.instances_from_probs`): the minimum instance
    # area in pixels, and the depth in pixels of a neck that cuts an interior blob into two
    # cells (touching red cells whose thin contour the network leaves open). With
    # `tune_instances` a run chooses both on the validation split (the lowest count error
    # per image; see `instances.choose_instance_rules`) and the model version stores them
    # here, so counting and evaluation read the network the same way.
    instance_min_area: dict[str, int] = Field(default_factory=dict)
    instance_split_depth: dict[str, float] = Field(default_factory=dict)
    # Labels read as connected components of their own pixels instead of by the watershed
    # (cells that rarely touch; chosen on validation like the two above). Unset (None)
    # it stays out of the run's hash, so recorded runs keep theirs.
    instance_components: list[str] | None = None
    # The radius in pixels of an opening that cuts interior bridges before seeding (a gap
    # in a predicted membrane), per label, chosen like the split depth; unset, out of the
    # hash like `instance_components`.
    instance_opening: dict[str, int] | None = None
    # The interior probability a pixel needs to seed a cell, per label (0 or unset: the
    # interior is its most likely class), chosen like the split depth; a gap in a predicted
    # membrane is interior by a thin margin, so the threshold parts the cells it joins.
    # Unset, out of the hash like `instance_components`.
    instance_seed_threshold: dict[str, float] | None = None
    # Per label, the area in pixels above which a blob is cut at its deepest neck
    # (`instances.cut_oversized`): the largest annotated interior of the label the rules
    # were chosen on (its largest whole object for a label read as components), kept where
    # it does not count them worse; unset, out of the hash like `instance_components`.
    instance_split_area: dict[str, int] | None = None
    # The share of its label's minimum area an instance on the image's edge must reach
    # (`objects.EDGE_AREA_SHARE` when unset, and out of the hash like `instance_components`).
    instance_edge_share: float | None = Field(None, gt=0.0, le=1.0)
    # How many annotated objects of each label the rules above were chosen on (the
    # validation split's, plus training images' for a label it holds few of; see
    # `evaluate.rule_basis`), for `count` to say when that is too few; unset, out of the
    # hash like `instance_components`.
    instance_rule_objects: dict[str, int] | None = None
    tune_instances: bool = True

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        """Checked when the recipe is made (a trigger answers 422), not when the training
        builds the network hours later."""
        problem = encoder_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @model_validator(mode="before")
    @classmethod
    def _defaults_for(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "decoder_channels" not in data:
            depth = data.get("encoder_depth", cls.model_fields["encoder_depth"].default)
            if depth in DEFAULT_DECODER_CHANNELS:
                data = {**data, "decoder_channels": DEFAULT_DECODER_CHANNELS[depth]}
        if "loss" not in data and data.get("mode") in DEFAULT_LOSS:
            data = {**data, "loss": DEFAULT_LOSS[data["mode"]]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SegmentationRecipe:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.decoder_channels is not None and len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels has {len(self.decoder_channels)} entries but encoder_depth "
                f"is {self.encoder_depth}; they must match"
            )
        if self.full_resolution_branch is not None and self.arch.lower() != "unet":
            raise ValueError(
                f"full_resolution_branch applies only to arch 'unet' (whose decoder ends at "
                f"full resolution), got arch {self.arch!r}; set it to null"
            )
        bad = {k: v for k, v in self.instance_min_area.items() if v < 1}
        bad |= {k: v for k, v in self.instance_split_depth.items() if v < 0}
        bad |= {k: v for k, v in (self.instance_opening or {}).items() if v < 0}
        bad |= {k: v for k, v in (self.instance_split_area or {}).items() if v < 0}
        bad |= {k: v for k, v in (self.instance_seed_threshold or {}).items() if not 0 <= v < 1}
        if bad:
            raise ValueError(
                "instance_min_area must be >= 1, instance_split_depth, instance_opening and "
                "instance_split_area >= 0, instance_seed_threshold in [0, 1), "
                f"got {bad}"
            )
        if self.loss not in MODE_LOSSES[self.mode]:
            raise ValueError(
                f"loss {self.loss!r} does not fit mode {self.mode!r}; valid for {self.mode}: "
                f"{', '.join(MODE_LOSSES[self.mode])}"
            )
        return self

    def instance_rules(self, labels: Sequence[str]) -> dict[str, list[Any]]:
        """`instances_from_probs` keyword arguments (one value per label, in order)."""
        return {
            "min_area": [self.instance_min_area.get(lb, DEFAULT_MIN_AREA) for lb in labels],
            "split_depth": [self.instance_split_depth.get(lb, 0.0) for lb in labels],
            "components": [lb in (self.instance_components or ()) for lb in labels],
            "opening": [(self.instance_opening or {}).get(lb, 0) for lb in labels],
            "split_area": [(self.instance_split_area or {}).get(lb, 0) for lb in labels],
            "seed_threshold": [(self.instance_seed_threshold or {}).get(lb, 0.0) for lb in labels],
            "edge_share": [
                EDGE_AREA_SHARE if self.instance_edge_share is None else self.instance_edge_share
            ]
            * len(labels),
        }

    def _override_data(self, overrides: dict[str, Any]) -> dict[str, Any]:
        data = super()._override_data(overrides)
        # Changing encoder_depth alone re-derives decoder_channels for the new depth, and
        # changing mode alone re-derives the loss.
        if "encoder_depth" in overrides and "decoder_channels" not in overrides:
            data.pop("decoder_channels")
        if "mode" in overrides and "loss" not in overrides:
            data.pop("loss")
        return data
