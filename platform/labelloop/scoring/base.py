"""Uncertainty scoring: how unsure a model is about one image, as a single number.

Active learning sends the highest-scoring (least confident) images to annotators first.
Methods are registered by name so a project's settings can name one, and a typo fails
with the list of valid names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from labelloop.errors import ConfigError

if TYPE_CHECKING:
    from labelloop.training.kind import Prediction, View


class ScoringMethod(ABC):
    """One scoring rule. `score` must return higher for less confident predictions."""

    name: ClassVar[str]
    task: ClassVar[str]
    # Which of a Prediction's `arrays` the method reads (layout defined by the task).
    reads: ClassVar[str] = "probs"
    # None: the plain prediction is enough. "tta" / "mc": the method compares several
    # passes over the image (see `MultiPassMethod`).
    passes: ClassVar[str | None] = None
    n_passes: ClassVar[int] = 0

    def score_prediction(self, prediction: Prediction, views: Sequence[View] = ()) -> float:
        """The uncertainty of one image from its prediction (and its views, if needed)."""
        return self.score_arrays(prediction.arrays)

    @abstractmethod
    def score(self, probs: np.ndarray) -> float:
        """Uncertainty of one prediction (probabilities, layout defined by the task)."""

    def score_arrays(self, arrays: dict[str, np.ndarray]) -> float:
        """Score a model's prediction arrays (see `training.kind.Prediction.arrays`)."""
        if self.reads not in arrays:
            raise ConfigError(
                f"scoring method {self.name!r} needs {self.reads!r} from the model's "
                f"prediction, which gave {sorted(arrays)}"
            )
        return self.score(arrays[self.reads])


class MultiPassMethod(ScoringMethod):
    """A method that needs `n_passes` extra looks at each image: the 8 flips and quarter
    turns ("tta") or Monte-Carlo dropout passes ("mc"). Scoring with it costs that many
    forward passes per image, which is why single-pass methods stay the defaults."""

    passes: ClassVar[str | None] = "tta"
    n_passes: ClassVar[int] = 8

    def score(self, probs: np.ndarray) -> float:
        raise ConfigError(f"scoring method {self.name!r} needs several passes per image")

    def score_prediction(self, prediction: Prediction, views: Sequence[View] = ()) -> float:
        if not views:
            raise ConfigError(
                f"scoring method {self.name!r} needs {self.passes} passes, and none were made"
            )
        return self.score_views(prediction.arrays, views)

    @abstractmethod
    def score_views(self, arrays: dict[str, np.ndarray], views: Sequence[View]) -> float:
        """Uncertainty from the plain prediction's arrays and the extra passes."""


# (task, name) -> method: one name (e.g. "bald") may mean the same idea for several tasks.
_REGISTRY: dict[tuple[str, str], type[ScoringMethod]] = {}
M = TypeVar("M", bound=type[ScoringMethod])


def register(cls: M) -> M:
    """Class decorator adding a method to the registry under (`cls.task`, `cls.name`)."""
    key = (cls.task, cls.name)
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise ValueError(f"scoring method {cls.name!r} is already registered for {cls.task}")
    _REGISTRY[key] = cls
    return cls


def available_methods(task: str | None = None) -> list[str]:
    return sorted({n for (t, n) in _REGISTRY if task is None or t == task})


def get_method(name: str, task: str | None = None) -> ScoringMethod:
    """An instance of the named method; with `task`, the one that belongs to that task."""
    matches = [c for (t, n), c in _REGISTRY.items() if n == name and task in (None, t)]
    if len(matches) == 1:
        return matches[0]()
    if len(matches) > 1:
        raise ConfigError(
            f"scoring method {name!r} exists for several tasks "
            f"({', '.join(sorted(c.task for c in matches))}); name the task"
        )
    what = f" for {task}" if task else ""
    raise ConfigError(
        f"unknown scoring method {name!r}{what}; valid choices: "
        f"{', '.join(available_methods(task)) or '(none)'}"
    )
