"""Selection: strategies (a name registry) and the stage that turns them into rounds."""

from labelloop.selection.registry import STRATEGIES, get_strategy
from labelloop.selection.rounds import (
    NothingToSelect,
    RoundResult,
    default_strategy,
    latest_round,
    select_round,
)
from labelloop.selection.strategies import Candidates, Strategy

__all__ = [
    "STRATEGIES",
    "Candidates",
    "NothingToSelect",
    "RoundResult",
    "Strategy",
    "default_strategy",
    "get_strategy",
    "latest_round",
    "select_round",
]
