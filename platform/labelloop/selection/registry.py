"""The strategies by name: what `select --strategy`, pipeline parameters and simulations
name. A typo fails listing the valid names; parameters are checked against defaults."""

from __future__ import annotations

import math
from typing import Any

from labelloop.errors import InputError
from labelloop.selection.combined import (
    BadgeStrategy,
    ClusterMarginStrategy,
    CountUncertaintyStrategy,
    DetectionAwareStrategy,
    TypicalityStrategy,
)
from labelloop.selection.strategies import (
    ClassBalanceStrategy,
    CoresetStrategy,
    HybridStrategy,
    PowerStrategy,
    RandomStrategy,
    Strategy,
    UncertaintyStrategy,
)

STRATEGIES: dict[str, Strategy] = {
    s.name: s()
    for s in (
        RandomStrategy,
        UncertaintyStrategy,
        PowerStrategy,
        CoresetStrategy,
        HybridStrategy,
        ClassBalanceStrategy,
        BadgeStrategy,
        ClusterMarginStrategy,
        DetectionAwareStrategy,
        TypicalityStrategy,
        CountUncertaintyStrategy,
    )
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise InputError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        ) from None


def check_params(strategy: Strategy, params: dict[str, Any]) -> dict[str, Any]:
    """The strategy's defaults overlaid with `params`; unknown names are refused, and so
    is a value that does not read as a finite number (every parameter is one): `--param
    prefilter=wide` or a word in an API body is an error naming the parameter, not a
    ValueError deep in the ranking."""
    unknown = set(params) - set(strategy.defaults)
    if unknown:
        valid = ", ".join(sorted(strategy.defaults)) or "none"
        raise InputError(
            f"strategy {strategy.name!r} has no parameter {', '.join(sorted(unknown))}; "
            f"valid: {valid}"
        )
    for key, value in params.items():
        if not _finite_number(value):
            raise InputError(
                f"strategy {strategy.name!r}: parameter {key} must be a number, got {value!r}"
            )
    return {**strategy.defaults, **params}


def _finite_number(value: Any) -> bool:
    """Whether `value` reads as a finite number, as the strategies read it (`float`)."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
