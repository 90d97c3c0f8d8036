"""How often the count intervals `labelloop count` prints hold the annotated count, for
the benchmarks that count (cell_counts, bccd_detection)."""

from __future__ import annotations

from typing import Any

import numpy as np

from labelloop.kinds import kind_entry
from labelloop.objects import count_intervals, object_counts
from labelloop.training.common import item_shapes, load_image, split_items
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
    counted = kind_entry(recipe.task).counted_kinds
    margin = recipe.count_interval_margin
    rows: dict[str, list[tuple[float, float, int]]] = {lb: [] for lb in labels}
    for item in split_items(manifest, split):
        pred = kind.predict(model, [load_image(item, fetch)], recipe=recipe, labels=labels)[0]
        truth = object_counts(item_shapes(item), labels, counted)
        for lb, iv in count_intervals(pred.shapes, labels, margin=margin).items():
            rows[lb].append((iv["low"], iv["high"], truth[lb]))
    return {
        lb: {
            "coverage": round(float(np.mean([lo <= t <= hi for lo, hi, t in r])), 4),
            "truth_above": round(float(np.mean([t > hi for _, hi, t in r])), 4),
            "mean_width": round(float(np.mean([hi - lo for lo, hi, _ in r])), 2),
        }
        for lb, r in rows.items()
    }
