"""Uncertainty scoring methods, looked up by name (`get_method`).

Each task kind's methods live in the module its `labelloop.kinds` entry names; importing
this package imports those modules, which register their methods.
"""

from labelloop.kinds import KINDS, load
from labelloop.scoring.base import (
    MultiPassMethod,
    ScoringMethod,
    available_methods,
    get_method,
    register,
)

for _kind in KINDS:
    load(_kind.scoring)

__all__ = ["MultiPassMethod", "ScoringMethod", "available_methods", "get_method", "register"]
