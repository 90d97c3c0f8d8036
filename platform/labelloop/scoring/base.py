"""Uncertainty scoring: how unsure a model is about one image, as a single number.

Active learning sends the highest-scoring (least confident) images to annotators first.
Methods are registered by name so a project's settings can name one, and a typo fails
with the list of valid names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

import numpy as np

from labelloop.errors import ConfigError


class ScoringMethod(ABC):
    """One scoring rule. `score` must return higher for less confident predictions."""

    name: ClassVar[str]
    task: ClassVar[str]
    # Which of a Prediction's `arrays` the method reads (layout defined by the task).
    reads: ClassVar[str] = "probs"

    @abstractmethod
    def score(self, probs: np.ndarray) -> float:
        """Uncertainty of one prediction (probabilities, layout defined by the task)."""

    def score_arrays(self, arrays: dict[str, np.ndarray]) -> float:
        """Score a model's prediction arrays (see `training.kinds.Prediction.arrays`)."""
        if self.reads not in arrays:
            raise ConfigError(
                f"scoring method {self.name!r} needs {self.reads!r} from the model's "
                f"prediction, which gave {sorted(arrays)}"
            )
        return self.score(arrays[self.reads])


_REGISTRY: dict[str, type[ScoringMethod]] = {}
M = TypeVar("M", bound=type[ScoringMethod])


def register(cls: M) -> M:
    """Class decorator adding a method to the registry under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"scoring method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods(task: str | None = None) -> list[str]:
    return sorted(n for n, c in _REGISTRY.items() if task is None or c.task == task)


def get_method(name: str, task: str | None = None) -> ScoringMethod:
    """An instance of the named method; with `task`, it must also belong to that task."""
    cls = _REGISTRY.get(name)
    if cls is None or (task is not None and cls.task != task):
        what = f" for {task}" if task else ""
        raise ConfigError(
            f"unknown scoring method {name!r}{what}; valid choices: "
            f"{', '.join(available_methods(task)) or '(none)'}"
        )
    return cls()
