"""The training recipe: every choice that decides what a run produces, in one validated object.

A recipe is stored with each model version, and its hash identifies the run, so two runs
with the same recipe on the same frozen dataset are the same experiment. Unknown fields are
rejected so a typo in a YAML file cannot silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labelloop.errors import ConfigError

LossName = Literal["dice_ce", "ce", "focal", "dice_focal", "bce", "dice_bce"]
SegmentationMode = Literal["multiclass", "binary", "instance"]
SchedulerName = Literal["onecycle", "cosine", "constant"]
OptimizerName = Literal["adamw", "sgd"]
# "bf16": mixed precision (bfloat16 compute, float32 weights); "auto" picks it where the
# hardware runs bfloat16 natively (CUDA with bf16, CPUs with AMX) and float32 elsewhere.
PrecisionName = Literal["32", "bf16", "auto"]

# Fields that bound how long a run goes on, not what it learns: a checkpoint written under
# one budget may be continued under another (see `Recipe.resume_key`).
BUDGET_FIELDS = frozenset({"epochs", "max_time_s", "num_workers"})

# Decoder widths per encoder depth, used when a recipe sets the depth but not the widths.
# Narrow on purpose: the full-resolution decoder stages dominate CPU time, and cells are
# simple shapes that do not need smp's default (256, 128, 64, 32, 16).
DEFAULT_DECODER_CHANNELS: dict[int, tuple[int, ...]] = {
    3: (64, 32, 16),
    4: (64, 48, 32, 16),
    5: (128, 64, 48, 32, 16),
}


class Augment(BaseModel):
    """Training-time augmentation. Stain and brightness jitter matter most for smears,
    whose colour varies between labs far more than their geometry does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    flips: bool = True
    rot90: bool = True
    brightness_contrast: float = Field(0.15, ge=0.0, le=1.0)
    hue_shift: int = Field(8, ge=0, le=90, description="degrees of hue jitter (stain colour)")
    saturation_shift: int = Field(15, ge=0, le=100)
    scale: float = Field(0.1, ge=0.0, le=0.5, description="relative zoom range, +/-")
    blur: float = Field(0.0, ge=0.0, le=1.0, description="probability of a slight blur")


class BaseRecipe(BaseModel):
    """What every model kind shares: backbone, input size, optimiser, schedule, budget, seed.

    Each kind (segmentation, detection, classification) subclasses this with a literal
    `task` and its own fields; `parse_recipe` picks the class from `task`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    encoder: str = "resnet18"
    # None trains from scratch; "imagenet" (smp / timm names) where the machine can fetch it.
    encoder_weights: str | None = None
    image_size: int = Field(128, ge=32, le=4096)
    batch_size: int = Field(8, ge=1, le=1024)
    epochs: int = Field(45, ge=1, le=10_000)
    max_time_s: float | None = Field(None, gt=0)
    optimizer: OptimizerName = "adamw"
    lr: float = Field(3e-3, gt=0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: SchedulerName = "onecycle"
    augment: Augment = Field(default_factory=Augment)
    seed: int = 0
    num_workers: int = Field(0, ge=0, le=64)
    # Training arithmetic. bfloat16 is 2-3x faster on CPUs with AMX and on recent GPUs, at
    # no measurable cost in accuracy here, but emulated (slow) on other CPUs; see
    # `harness.trainer_precision`. Prediction always runs in float32.
    precision: PrecisionName = "32"

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def recipe_hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, defaults included): the run's identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def resume_key(self) -> str:
        """Hash of everything except the budget: a checkpoint may be resumed under a recipe
        with the same key, e.g. the same run given more epochs."""
        core = {k: v for k, v in self.model_dump(mode="json").items() if k not in BUDGET_FIELDS}
        text = json.dumps(core, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Self:
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(f"invalid training recipe: {_describe(exc)}") from exc

    def _override_data(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Current values merged with overrides; subclasses drop derived fields here."""
        data = self.model_dump(mode="json")
        if isinstance(overrides.get("augment"), dict):
            overrides["augment"] = {**data["augment"], **overrides["augment"]}
        return {**data, **overrides}

    def with_overrides(self, overrides: dict[str, Any] | None) -> Self:
        """A validated copy with some fields changed (ConfigError when invalid); `augment`
        merges field by field."""
        return type(self).from_dict(self._override_data(dict(overrides or {})))

    @classmethod
    def from_str(cls, text: str) -> Self:
        """Parse YAML (or JSON, which is YAML) text."""
        return cls.from_dict(_load_yaml(text))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        return cls.from_str(_read(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)


# Losses each output mode can train with: softmax modes take (Dice +) cross-entropy or
# focal; sigmoid (binary) mode takes (Dice +) binary cross-entropy or focal.
MODE_LOSSES: dict[str, tuple[str, ...]] = {
    "multiclass": ("dice_ce", "ce", "focal", "dice_focal"),
    "binary": ("dice_bce", "bce", "focal", "dice_focal"),
    "instance": ("dice_ce", "ce", "focal", "dice_focal"),
}
DEFAULT_LOSS = {"multiclass": "dice_ce", "binary": "dice_bce", "instance": "dice_ce"}


class SegmentationRecipe(BaseRecipe):
    """A U-Net-family run (segmentation-models-pytorch).

    `mode` decides what the network outputs and how it is read:
    - "multiclass": softmax over background + labels; one class per pixel.
    - "binary": one sigmoid channel per label; labels may overlap (e.g. EM membranes).
    - "instance": softmax over background, each label's interior and each label's
      contour, so touching cells of one class are split by watershed from the interiors;
      counts are then instances rather than connected blobs.
    """

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
        if self.loss not in MODE_LOSSES[self.mode]:
            raise ValueError(
                f"loss {self.loss!r} does not fit mode {self.mode!r}; valid for {self.mode}: "
                f"{', '.join(MODE_LOSSES[self.mode])}"
            )
        return self

    def _override_data(self, overrides: dict[str, Any]) -> dict[str, Any]:
        data = super()._override_data(overrides)
        # Changing encoder_depth alone re-derives decoder_channels for the new depth, and
        # changing mode alone re-derives the loss.
        if "encoder_depth" in overrides and "decoder_channels" not in overrides:
            data.pop("decoder_channels")
        if "mode" in overrides and "loss" not in overrides:
            data.pop("loss")
        return data


# The name most of the code base knows a segmentation recipe by.
Recipe = SegmentationRecipe

# task -> "module:Class", imported on first use so a segmentation worker never loads the
# detection code (and the other way round).
RECIPE_CLASSES: dict[str, str] = {
    "segmentation": "labelloop.training.recipe:SegmentationRecipe",
    "detection": "labelloop.training.detection.recipe:DetectionRecipe",
    "classification": "labelloop.training.classification.recipe:ClassificationRecipe",
}


def recipe_class(task: str) -> type[BaseRecipe]:
    target = RECIPE_CLASSES.get(task)
    if target is None:
        raise ConfigError(
            f"no recipe for task {task!r}; valid tasks: {', '.join(sorted(RECIPE_CLASSES))}"
        )
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def parse_recipe(data: dict[str, Any] | None, task: str | None = None) -> BaseRecipe:
    """The recipe of `data["task"]` (or `task` when data names none); ConfigError if the
    two disagree or a field is invalid."""
    data = dict(data or {})
    named = data.get("task")
    if task is not None and named is not None and named != task:
        raise ConfigError(f"recipe is for task {named!r} but the project is {task!r}")
    chosen = named or task or "segmentation"
    return recipe_class(chosen).from_dict({**data, "task": chosen})


def parse_recipe_text(text: str, task: str | None = None) -> BaseRecipe:
    return parse_recipe(_load_yaml(text), task)


def _load_yaml(text: str) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"training recipe is not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError("training recipe must be a mapping of field: value")
    return data


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read training recipe {path}: {exc}") from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "recipe"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
