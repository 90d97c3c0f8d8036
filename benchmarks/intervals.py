"""How often the count intervals `labelloop count` prints hold the annotated count, for
the benchmarks that count (cell_counts, bccd_detection)."""

from __future__ import annotations

from typing import Any

import numpy as np

from labelloop.training.intervals import interval_rows
from labelloop.training.kind import ModelKind


def interval_coverage(
    kind: ModelKind,
    model: Any,
    manifest: dict,
    fetch: Any,
    labels: list[str],
    recipe: Any,
    split: str = "test",
) -> dict:
    """Per class over the split's images: the share whose annotated count lies inside the
    count interval (`objects.count_intervals`: sum of the objects' probabilities +- 1.96
    sd, plus the recipe's `count_interval_margin`), the share whose count lies above it
    (cells the model missed) and the mean interval width."""
    rows = interval_rows(
        kind,
        model,
        manifest,
        fetch,
        labels=labels,
        recipe=recipe,
        split=split,
        margin=recipe.count_interval_margin,
    )
    out = {}
    for lb in labels:
        r = [(iv[lb]["low"], iv[lb]["high"], truth[lb]) for iv, truth in rows]
        out[lb] = {
            "coverage": round(float(np.mean([lo <= t <= hi for lo, hi, t in r])), 4),
            "truth_above": round(float(np.mean([t > hi for _, hi, t in r])), 4),
            "mean_width": round(float(np.mean([hi - lo for lo, hi, _ in r])), 2),
        }
    return out
