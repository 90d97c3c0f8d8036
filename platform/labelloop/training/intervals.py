"""Count intervals that hold the truth as often as they claim, calibrated on validation.

`objects.count_intervals` reads each predicted object's confidence as the probability that
it is a cell. That interval cannot see the cells the model missed, nor annotations the
model reads differently, so on its own it covers the annotated count less often than the
95 % it is computed for. After training, every kind that counts predicts its validation
images, and the cells to add to both sides of each label's interval are chosen so that
95 % of those images' annotated counts fall inside (`objects.interval_margins`, split
conformal); the model version stores them in its recipe (`count_interval_margin`) and
`count` and the score stage (the `count_uncertainty` strategy) use them. Kinds opt in
(`ModelKind.count_intervals`): segmentation and detection, not classification.

The evaluation then measures on the test split how often the calibrated intervals held
the annotated count (`add_interval_coverage`): validation chose the margins, so only the
test split can say whether they hold on new images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from labelloop.kinds import kind_entry
from labelloop.objects import conformal_rank, count_intervals, interval_margins, object_counts
from labelloop.training.common import Fetch, item_shapes, load_image, split_items
from labelloop.training.kind import ModelKind

CHUNK = 8  # validation images predicted at once: memory stays bounded by one chunk


def interval_rows(
    kind: ModelKind,
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    labels: Sequence[str],
    recipe: Any,
    split: str,
    margin: Mapping[str, float] | None = None,
) -> list[tuple[dict[str, dict[str, float]], dict[str, int]]]:
    """Per image of `split`: the count intervals of the model's prediction (widened by
    `margin`) and the annotated counts, counted as the kind counts its truth."""
    items = split_items(manifest, split)
    counted = kind_entry(recipe.task).counted_kinds
    rows = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        preds = kind.predict(
            model, [load_image(it, fetch) for it in chunk], recipe=recipe, labels=labels
        )
        for item, pred in zip(chunk, preds, strict=True):
            truth = object_counts(item_shapes(item), labels, counted)
            rows.append((count_intervals(pred.shapes, labels, margin=margin), truth))
    return rows


def calibrate_count_intervals(
    kind: ModelKind,
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    labels: Sequence[str],
    recipe: Any,
) -> Any:
    """The recipe with `count_interval_margin` chosen on the validation split; unchanged
    (a margin set by hand kept) when validation holds too few images to calibrate
    (fewer than 19 for 95 %)."""
    if conformal_rank(len(split_items(manifest, "val"))) is None:
        return recipe  # nothing to predict for: no margin could be chosen
    rows = interval_rows(kind, model, manifest, fetch, labels=labels, recipe=recipe, split="val")
    margin = interval_margins(rows, labels)
    if not margin:
        return recipe
    return recipe.model_copy(update={"count_interval_margin": margin})


def interval_coverage(
    kind: ModelKind,
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    labels: Sequence[str],
    recipe: Any,
    split: str = "test",
) -> dict[str, dict[str, float]]:
    """Per class over the split's images: the share whose annotated count lies inside the
    count interval (`objects.count_intervals` widened by the recipe's
    `count_interval_margin`), the share whose count lies above it (cells the model missed)
    and the mean interval width; empty when the split holds no image."""
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
    out: dict[str, dict[str, float]] = {}
    for lb in labels if rows else ():
        r = [(iv[lb]["low"], iv[lb]["high"], truth[lb]) for iv, truth in rows]
        out[lb] = {
            "coverage": round(float(np.mean([lo <= t <= hi for lo, hi, t in r])), 4),
            "truth_above": round(float(np.mean([t > hi for _, hi, t in r])), 4),
            "mean_width": round(float(np.mean([hi - lo for lo, hi, _ in r])), 2),
        }
    return out


def add_interval_coverage(
    test: dict[str, Any],
    kind: ModelKind,
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    labels: Sequence[str],
    recipe: Any,
) -> dict[str, Any]:
    """The test metrics with, per class, how often the count interval held the annotated
    count (`interval_coverage`) and its mean width (`interval_width`), and the number of
    test images that rests on (`interval_images`); unchanged when the split is empty."""
    images = len(split_items(manifest, "test"))
    found = interval_coverage(kind, model, manifest, fetch, labels=labels, recipe=recipe)
    if not found:
        return test
    per_class = test.setdefault("per_class", {})
    for lb, c in found.items():
        entry = per_class.setdefault(lb, {})
        entry["interval_coverage"] = c["coverage"]
        entry["interval_width"] = c["mean_width"]
    test["interval_images"] = images
    return test
