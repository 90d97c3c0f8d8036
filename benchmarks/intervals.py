"""Count intervals as `labelloop count` prints them, for the benchmarks that count
(cell_counts, bccd_detection): on the test split, from the objects' confidences alone and
widened by the margins a training run chooses on validation (`training.intervals`)."""

from __future__ import annotations

from typing import Any

from labelloop.training.intervals import calibrate_count_intervals, interval_coverage
from labelloop.training.kind import ModelKind


def interval_figures(
    kind: ModelKind, model: Any, manifest: dict, fetch: Any, labels: list[str], recipe: Any
) -> dict[str, Any]:
    """Test coverage per class (`interval_coverage`) of the intervals from `recipe`
    ("intervals") and from it with margins chosen on validation ("intervals_calibrated",
    the margins as "interval_margin")."""
    calibrated = calibrate_count_intervals(
        kind, model, manifest, fetch, labels=labels, recipe=recipe
    )
    return {
        "intervals": interval_coverage(kind, model, manifest, fetch, labels=labels, recipe=recipe),
        "interval_margin": calibrated.count_interval_margin,
        "intervals_calibrated": interval_coverage(
            kind, model, manifest, fetch, labels=labels, recipe=calibrated
        ),
    }
