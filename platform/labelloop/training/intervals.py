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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
