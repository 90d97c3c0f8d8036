"""The model kinds the platform trains, behind one small interface.

A kind owns everything that differs between segmentation, detection and classification:
how it trains from a frozen manifest (its filling of the harness's training template), how
it loads saved weights, how it is evaluated, and how it predicts shapes and counts for new
images; its recipe class, default scoring method and promotion metric are its entry in
`labelloop.kinds`. Runs, the registry, pool scoring, counting and push-back only talk to
this interface, so they never branch on the task themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from labelloop import kinds
from labelloop.domain import Shape
from labelloop.training import harness
from labelloop.training.common import Fetch
from labelloop.training.harness import Progress, TrainingPlan, TrainOutcome
from labelloop.training.recipe import BaseRecipe, recipe_class


@dataclass
class Prediction:
    """A model's answer for one image, in that image's pixel coordinates.

    `shapes` become pre-annotations and overlays (boxes carry their score); `counts` is
    per label name (every label present, zeros included). `confidence` in [0, 1] is the
    model's overall certainty for this image, the fallback for uncertainty scoring;
    `arrays` holds what a kind's scoring methods need (e.g. "probs" (C, H, W) for
    segmentation, "class_probs" (N, C) per detected box, "probs" (C,) for a classifier).
    """

    shapes: list[Shape]
    counts: dict[str, int]
    confidence: float
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class View:
    """One extra look at an image for multi-pass uncertainty: a test-time-augmentation view
    mapped back to the image's own frame, or one Monte-Carlo dropout pass. Only what the
    scoring methods read: the kind's arrays (same layout as `Prediction.arrays`) and the
    per-label counts that view implies."""

    arrays: dict[str, np.ndarray]
    counts: dict[str, int] = field(default_factory=dict)


PassMode = str  # "tta" (flips / quarter turns) or "mc" (dropout kept on)


class LoadFn(Protocol):
    def __call__(self, weights: bytes | Path, recipe: Any, labels: Sequence[str]) -> nn.Module: ...


class EvaluateFn(Protocol):
    def __call__(
        self,
        model: nn.Module,
        manifest: dict[str, Any],
        fetch: Fetch,
        *,
        split: str,
        labels: Sequence[str],
        recipe: Any,
    ) -> dict[str, Any]: ...


class PredictFn(Protocol):
    def __call__(
        self,
        model: nn.Module,
        images: Sequence[np.ndarray],
        *,
        recipe: Any,
        labels: Sequence[str],
    ) -> list[Prediction]: ...


class ViewsFn(Protocol):
    def __call__(
        self,
        model: nn.Module,
        images: Sequence[np.ndarray],
        *,
        recipe: Any,
        labels: Sequence[str],
        mode: PassMode,
        passes: int,
    ) -> list[list[View]]: ...


class EmbedFn(Protocol):
    def __call__(
        self, model: nn.Module, images: Sequence[np.ndarray], *, recipe: Any
    ) -> np.ndarray: ...


class CalibrateFn(Protocol):
    def __call__(
        self,
        model: nn.Module,
        manifest: dict[str, Any],
        fetch: Fetch,
        *,
        labels: Sequence[str],
        recipe: Any,
    ) -> Any: ...


@dataclass(frozen=True)
class ModelKind:
    """One model kind: `kind.py` of its subpackage defines it as `KIND`."""

    training: TrainingPlan
    load: LoadFn
    evaluate: EvaluateFn
    predict: PredictFn
    # Extra passes per image for multi-pass scoring methods (TTA / MC dropout): one list
    # of Views per image. Modes a kind cannot run raise ConfigError naming the fix.
    views: ViewsFn | None = None
    # Pooled encoder features (N, D) float32: what diversity strategies compare.
    embed: EmbedFn | None = None
    # Inference settings chosen on the validation split after training (e.g. a detector's
    # per-class count thresholds): the recipe the model version is stored and used with.
    calibrate: CalibrateFn | None = None
    # Whether `predict` counts objects whose confidences give count intervals, widened
    # after training by margins chosen on validation (`training.intervals`). A classifier
    # labels whole images (or, trained on crops, cannot predict an image without boxes).
    count_intervals: bool = False

    @property
    def task(self) -> str:
        return self.training.task

    @property
    def recipe_cls(self) -> type[BaseRecipe]:
        return recipe_class(self.task)

    @property
    def primary_metric(self) -> str:
        """A key of `evaluate`'s result, higher is better: the number the promotion gate
        compares on the frozen test split."""
        return kinds.kind_entry(self.task).primary_metric

    @property
    def default_scoring(self) -> str:
        return kinds.kind_entry(self.task).default_scoring

    def calibrated(
        self, arrays: dict[str, np.ndarray], temperature: float
    ) -> dict[str, np.ndarray]:
        """Prediction (or view) arrays with the kind's probabilities rescaled by the model
        version's fitted temperature (unchanged at 1.0 or for a kind without calibration)."""
        cal = self.training.calibration
        return arrays if cal is None else cal.apply(arrays, temperature)

    def train(
        self,
        manifest: dict[str, Any],
        recipe: Any,
        fetch: Fetch,
        workdir: Path,
        *,
        on_progress: Progress | None = None,
        log_csv: bool = False,
    ) -> TrainOutcome:
        """Train (or resume) a run in `workdir`; see `harness.train`."""
        return harness.train(
            self.training,
            manifest,
            recipe,
            fetch,
            workdir,
            on_progress=on_progress,
            log_csv=log_csv,
        )


def get_kind(task: str) -> ModelKind:
    """The model kind of `task` (ConfigError for an unknown one), imported on first use."""
    return kinds.load(kinds.kind_entry(task).model)
