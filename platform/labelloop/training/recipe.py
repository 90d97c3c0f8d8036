"""The training recipe: every choice that decides what a run produces, in one validated object.

A recipe is stored with each model version, and its hash identifies the run, so two runs
with the same recipe on the same frozen dataset are the same experiment. Unknown fields are
rejected so a typo in a YAML file cannot silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labelloop.errors import ConfigError
from labelloop.kinds import DEFAULT_TASK, kind_entry, load

SchedulerName = Literal["onecycle", "cosine", "constant"]
OptimizerName = Literal["adamw", "sgd"]
# "bf16": mixed precision (bfloat16 compute, float32 weights); "auto" picks it where the
# hardware runs bfloat16 natively (CUDA with bf16, CPUs with AMX or AVX512-BF16) and float32
# elsewhere.
PrecisionName = Literal["32", "bf16", "auto"]

# Fields that bound how long a run goes on, not what it learns: a checkpoint written under
# one budget may be continued under another (see `BaseRecipe.resume_key`).
BUDGET_FIELDS = frozenset({"epochs", "max_time_s", "num_workers"})
# Optional fields added after runs were recorded: left out of a run's identity when unset.
LATER_OPTIONAL = frozenset(
    {
        "init_from",
        "tta_views",
        "instance_components",
        "instance_opening",
        "instance_seed_threshold",
        "instance_split_area",
        "instance_edge_share",
        "instance_rule_objects",
        "count_interval_margin",
    }
)


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
    # The kind's fields that LATER_OPTIONAL describes (a kind adds its own).
    later_optional: ClassVar[frozenset[str]] = LATER_OPTIONAL

    task: str
    encoder: str = "resnet18"
    # None trains from scratch; "imagenet" (smp / timm names) where the machine can fetch it.
    encoder_weights: str | None = None
    # Warm start: the blob key of a model artifact (a saved network of the same recipe and
    # labels, e.g. the previous round's model) whose weights this training starts from.
    init_from: str | None = None
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
    # no measurable cost in accuracy here, but emulated (slow) on other CPUs, so "auto"
    # takes it only where it is native; see `harness.trainer_precision`. Prediction always
    # runs in float32.
    precision: PrecisionName = "auto"
    # Per label, cells added to both sides of every count interval so that it holds the
    # annotated count of 95 % of images (`objects.interval_margins`): chosen on the
    # validation split after training when it holds enough images (`training.intervals`);
    # set it by hand for a project whose validation split is smaller.
    count_interval_margin: dict[str, float] | None = None

    def _identity(self) -> dict[str, Any]:
        """The fields that identify a run; optional fields added after runs were recorded
        count only when set, so every recorded run keeps its hash."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if not (k in self.later_optional and v is None)}

    def canonical_json(self) -> str:
        return json.dumps(self._identity(), sort_keys=True, separators=(",", ":"))

    def recipe_hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, defaults included): the run's identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def resume_key(self) -> str:
        """Hash of everything except the budget: a checkpoint may be resumed under a recipe
        with the same key, e.g. the same run given more epochs."""
        core = {k: v for k, v in self._identity().items() if k not in BUDGET_FIELDS}
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


def recipe_class(task: str) -> type[BaseRecipe]:
    """The recipe class of `task` (see `labelloop.kinds`), imported on first use."""
    return load(kind_entry(task).recipe)


def parse_recipe(data: dict[str, Any] | None, task: str | None = None) -> BaseRecipe:
    """The recipe of `data["task"]` (or `task` when data names none); ConfigError if the
    two disagree or a field is invalid."""
    data = dict(data or {})
    named = data.get("task")
    if task is not None and named is not None and named != task:
        raise ConfigError(f"recipe is for task {named!r} but the project is {task!r}")
    chosen = named or task or DEFAULT_TASK
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
