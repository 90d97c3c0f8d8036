"""What a label-efficiency simulation runs: task, recipe, strategies, seeds, label budget.

A simulation replays the loop with an oracle: every pool image's labels are known but
withheld, and revealed only when a strategy selects the image. Each step trains a model on
what is labelled so far and measures it on a fixed, held-out test set, so the curves of
different strategies are comparable point by point.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labelloop.domain import TaskKind
from labelloop.errors import ConfigError


class SourceSpec(BaseModel):
    """Where the labelled data comes from (any `labelloop ingest` format) and which images
    form the held-out test set: a list of external ids / file stems, a text file of them
    (one per line, e.g. a VOC ImageSets list), or a seeded fraction."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: str = "auto"
    label_map: dict[str, str] = Field(default_factory=dict)
    test_ids: list[str] | None = None
    test_list: str | None = None
    pool_list: str | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_test_rule(self) -> SourceSpec:
        rules = [self.test_ids is not None, self.test_list is not None, self.test_fraction]
        if sum(bool(r) for r in rules) != 1:
            raise ValueError("give exactly one of test_ids, test_list or test_fraction")
        return self


class SimulationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "simulation"
    task: TaskKind
    labels: list[str]
    source: SourceSpec | None = None  # None: the caller passes the data (benchmarks)
    # Recipe fields for every training; `repeats` is set per step from samples_per_epoch.
    recipe: dict[str, Any] = Field(default_factory=dict)
    strategies: list[str] = Field(default_factory=lambda: ["random", "uncertainty", "hybrid"])
    methods: dict[str, str] = Field(
        default_factory=dict, description="strategy -> scoring method (default: the task's)"
    )
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="strategy -> strategy parameters"
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    # Labelled pool images after each step: the first is the random seed set.
    sizes: list[int] = Field(min_length=2)
    include_full: bool = True  # also train on the whole pool: the 95 % reference
    metric: str = Field(description="test metric to plot, dotted for nested keys")
    extra_metrics: list[str] = Field(default_factory=list)
    # Constant compute per training whatever the labelled count: each epoch draws about
    # this many samples (recipe.repeats = ceil(samples_per_epoch / labelled)).
    samples_per_epoch: int | None = Field(None, ge=1)
    jobs: int = Field(1, ge=1, le=64, description="runs in parallel, one core each")
    # The loop as users run it: each step after the first fine-tunes the previous step's
    # model (recipe `init_from`) for `warm_epochs` epochs instead of training from scratch.
    warm_start: bool = False
    warm_epochs: int | None = Field(None, ge=1)
    # Each round holds this share of random control images and the guard weighs them
    # (`selection.guard`): a strategy's curve then includes what the guard did.
    control_fraction: float = Field(0.0, ge=0, lt=1)

    def reference_epochs(self, steps: int) -> int | None:
        """The full-pool reference's epochs: None (the recipe's) for loops that retrain from
        scratch, which each step trains as long as the reference; a warm-started loop of
        `steps` trainings has trained as long as all of them together, and the reference
        it is measured against gets the same (equal compute, so "95 % of full" means
        labels saved, not training withheld from the reference)."""
        if not self.warm_start:
            return None
        from labelloop.training.recipe import recipe_class

        first = (
            self.recipe.get("epochs")
            or recipe_class(self.task.value).model_fields["epochs"].default
        )
        return int(first + (self.warm_epochs or first) * (steps - 1))

    @model_validator(mode="after")
    def _check(self) -> SimulationSpec:
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:], strict=False)):
            raise ValueError(f"sizes must increase, got {self.sizes}")
        if self.sizes[0] < 1:
            raise ValueError("the seed set needs at least one image")
        from labelloop.selection.registry import STRATEGIES

        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"unknown strategies {unknown}; choose from {', '.join(sorted(STRATEGIES))}"
            )
        return self


def load_spec(text: str, where: str = "simulation spec") -> SimulationSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    try:
        return SimulationSpec.model_validate(data or {})
    except ValidationError as exc:
        parts = [f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid {where}: {'; '.join(parts)}") from None
