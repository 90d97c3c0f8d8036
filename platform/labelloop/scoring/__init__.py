"""Uncertainty scoring methods, looked up by name (`get_method`)."""

from labelloop.scoring import classification as _classification  # noqa: F401  (registers)
from labelloop.scoring import detection as _detection  # noqa: F401
from labelloop.scoring import segmentation as _segmentation  # noqa: F401
from labelloop.scoring.base import (
    MultiPassMethod,
    ScoringMethod,
    available_methods,
    get_method,
    register,
)

__all__ = ["MultiPassMethod", "ScoringMethod", "available_methods", "get_method", "register"]
