"""From a model's per-pixel output to what people use: cell counts and editable regions;
and the true count of an annotation, which every count metric compares with.

A true count is the number of annotated objects (one per box, polygon, ellipse, point or
mask instance), never the connected components of a rasterised truth: rasterising merges
touching cells exactly as a semantic prediction does, so a count error measured that way
hides the very error it should show.

Semantic output (a label map, or one mask per label) is counted as connected components
of each class, which is how a cell count is read off a semantic segmentation; touching
cells of one class merge, so such counts are exact for separated cells and a lower bound
otherwise. Instance output (an instance map from watershed, see
`training.instances`) is counted one per instance, touching cells included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from labelloop.domain import Keypoint, Mask, Shape
from labelloop.geometry import (
    decode_mask,
    encode_instances,
    instance_count,
    mask_shape,
    shape_bbox,
)

DEFAULT_MIN_AREA = 4  # pixels; smaller blobs are argmax noise, not cells
# The share of its label's minimum area an instance on the image's edge must reach
# (`instances.instances_from_probs`). The minimum area is chosen to drop specks among
# whole cells (it ties up to the largest candidate that costs no annotated cell: 512 px
# for white cells of 800 to 1,800 px), while a cell whose centre is in view shows at
# least about half of itself. On ISBI cells it took F1@0.5 from 0.850 to 0.851 and the
# test slices counted within 5 % from 3 to 4 of 5 (BENCHMARKS.md).
EDGE_AREA_SHARE = 0.5

# What the count metrics of an evaluation were measured against, stored in the metrics
# ("count_truth") so numbers of different definitions are never compared unknowingly.
COUNT_TRUTH = "annotated_objects"
# Segmentation evaluations stored without the key counted the connected components of the
# rasterised truth, which merges touching cells (detection always counted true boxes).
LEGACY_COUNT_TRUTH = "raster_components"
_EIGHT = np.ones((3, 3), bool)


# Shapes annotators often draw beside an outline of the same cell (the box for detection,
# a click for counting): counted only where no outline of that label already covers them.
MARKER_KINDS = frozenset({"box", "keypoint"})
DUPLICATE_IOU = 0.5


# A mask attribute saying the mask is one object whatever its parts: a per-object mask
# file (one nucleus drawn in two fragments is still one nucleus), set by its reader.
WHOLE_OBJECT = "whole_object"


def object_counts(
    shapes: Iterable[Shape], labels: Sequence[str], kinds: Iterable[str]
) -> dict[str, int]:
    """Annotated objects per label among shapes of `kinds` (every label a key).

    Each shape is one object, however much it touches or overlaps others, with two
    exceptions that keep one cell from counting twice or several cells once: a mask made of
    separate parts (a brush stroke or class-region file covering several cells) is one
    object per 8-connected part, unless it says it is one object (`WHOLE_OBJECT`), and a
    box or point that marks a cell already outlined (box IoU >= 0.5 with the outline's
    bounding box, point inside it, same label) is not counted again."""
    wanted = frozenset(kinds)
    counts = dict.fromkeys(labels, 0)
    kept = [sh for sh in shapes if sh.kind in wanted and sh.label in counts]
    outlines: dict[str, list[tuple[float, float, float, float]]] = {}
    for sh in kept:
        if sh.kind in MARKER_KINDS:
            continue
        bbox = shape_bbox(sh)
        if bbox is not None:
            outlines.setdefault(sh.label, []).append(bbox)
        if isinstance(sh, Mask) and not sh.attributes.get(WHOLE_OBJECT):
            _, n = ndimage.label(decode_mask(sh.size, sh.counts), structure=_EIGHT)
            counts[sh.label] += n
        else:
            counts[sh.label] += 1
    for sh in kept:
        if sh.kind in MARKER_KINDS and not _marks_outline(sh, outlines.get(sh.label, [])):
            counts[sh.label] += 1
    return counts


def _marks_outline(marker: Shape, outlines: list[tuple[float, float, float, float]]) -> bool:
    box = shape_bbox(marker)
    if box is None:
        return False
    if isinstance(marker, Keypoint):
        return any(x0 <= box[0] <= x1 and y0 <= box[1] <= y1 for x0, y0, x1, y1 in outlines)
    return any(_iou(box, o) >= DUPLICATE_IOU for o in outlines)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def count_truth_of(metrics: Mapping[str, Any] | None, task: str) -> str:
    """What the count metrics of a stored evaluation of a `task` model compared with."""
    marked = (metrics or {}).get("count_truth")
    if marked:
        return str(marked)
    return LEGACY_COUNT_TRUTH if task == "segmentation" else COUNT_TRUTH


def probs_to_label_map(probs: np.ndarray) -> np.ndarray:
    """Softmax probabilities (C, H, W) -> uint8 label map (H, W), 0 = background."""
    if probs.ndim != 3:
        raise ValueError(f"expected probabilities of shape (C, H, W), got {probs.shape}")
    return probs.argmax(axis=0).astype(np.uint8)


def counts_from_label_map(
    label_map: np.ndarray, labels: Sequence[str], min_area: int = DEFAULT_MIN_AREA
) -> dict[str, int]:
    """Instances per label (every label present as a key, 0 when absent)."""
    return {
        name: instance_count(label_map, i, min_area=min_area)
        for i, name in enumerate(labels, start=1)
    }


def counts_from_masks(
    masks: np.ndarray, labels: Sequence[str], min_area: int = DEFAULT_MIN_AREA
) -> dict[str, int]:
    """Connected components per label of per-label masks (L, H, W), which may overlap."""
    _check_masks(masks, labels)
    return {
        name: instance_count(masks[i].astype(np.uint8), 1, min_area=min_area)
        for i, name in enumerate(labels)
    }


def counts_from_instances(classes: np.ndarray, labels: Sequence[str]) -> dict[str, int]:
    """Instances per label from an instance map's classes (classes[0] is background)."""
    per = np.bincount(np.asarray(classes[1:], np.int64), minlength=len(labels) + 1)
    return {name: int(per[i]) for i, name in enumerate(labels, start=1)}


def label_map_to_shapes(
    label_map: np.ndarray,
    labels: Sequence[str],
    *,
    per_instance: bool = True,
    min_area: int = DEFAULT_MIN_AREA,
    label_probs: np.ndarray | None = None,
) -> list[Mask]:
    """Masks for pre-annotation: one per connected region (default), so an annotator can
    delete or relabel a single cell, or one per class present when `per_instance=False`.
    Regions below `min_area` pixels are dropped in both modes. With `label_probs` (L, H, W)
    each mask carries `score`, its label's mean probability over the region (the
    per-object confidence count intervals are built from)."""
    shapes: list[Mask] = []
    for i, name in enumerate(labels, start=1):
        prob = None if label_probs is None else label_probs[i - 1]
        shapes.extend(_region_shapes(label_map == i, name, per_instance, min_area, prob))
    return shapes


def masks_to_shapes(
    masks: np.ndarray,
    labels: Sequence[str],
    *,
    per_instance: bool = True,
    min_area: int = DEFAULT_MIN_AREA,
    label_probs: np.ndarray | None = None,
) -> list[Mask]:
    """`label_map_to_shapes` for per-label masks (L, H, W) that may overlap."""
    _check_masks(masks, labels)
    shapes: list[Mask] = []
    for i, name in enumerate(labels):
        prob = None if label_probs is None else label_probs[i]
        shapes.extend(_region_shapes(masks[i].astype(bool), name, per_instance, min_area, prob))
    return shapes


def instance_shapes(
    inst: np.ndarray,
    classes: np.ndarray,
    labels: Sequence[str],
    label_probs: np.ndarray | None = None,
) -> list[Mask]:
    """One mask per instance of an instance map, labelled by its class (with `score` as in
    `label_map_to_shapes` when `label_probs` is given)."""
    ids = np.flatnonzero(np.bincount(np.asarray(inst).ravel())[1:]) + 1
    cls = np.asarray(classes)[ids].astype(int) - 1
    scores = np.full(len(ids), np.nan)
    if label_probs is not None:
        for c in np.unique(cls):
            scores[cls == c] = ndimage.mean(label_probs[c], inst, ids[cls == c])
    return _masks(inst, ids, [labels[c] for c in cls], scores)


def _masks(inst: np.ndarray, ids: np.ndarray, names: Sequence[str], scores: np.ndarray) -> list:
    """Masks of the given instances, with `score` (a mean probability) where it is a number."""
    out = []
    for (size, counts), name, score in zip(encode_instances(inst, ids), names, scores, strict=True):
        attributes = {} if np.isnan(score) else {"score": round(float(np.clip(score, 0, 1)), 4)}
        out.append(Mask(label=name, size=size, counts=counts, attributes=attributes))
    return out


def _scored(region: np.ndarray, name: str, prob: np.ndarray | None) -> Mask:
    shape = mask_shape(region, name)
    if prob is None:
        return shape
    score = round(float(np.clip(prob[region].mean(), 0.0, 1.0)), 4)
    return shape.model_copy(update={"attributes": {"score": score}})


def _region_shapes(
    region: np.ndarray, name: str, per_instance: bool, min_area: int, prob: np.ndarray | None
) -> list[Mask]:
    if not region.any():
        return []
    comp, _ = ndimage.label(region)
    areas = np.bincount(comp.ravel())
    keep = np.flatnonzero(areas[1:] >= min_area) + 1
    if not len(keep):
        return []
    if not per_instance:
        return [_scored(np.isin(comp, keep), name, prob)]
    scores = np.full(len(keep), np.nan) if prob is None else ndimage.mean(prob, comp, keep)
    return [*_masks(comp, keep, [name] * len(keep), np.asarray(scores, float))]


def enclosed_regions(boundary: np.ndarray, min_area: int = DEFAULT_MIN_AREA) -> np.ndarray:
    """Cells of a membrane / cell-border image: the 4-connected regions that the boundary
    pixels (bool (H, W)) enclose, at least `min_area` pixels, as an int32 instance map
    (0 = boundary or dropped). A gap in a predicted membrane merges the two cells it
    separates, so the count is only as good as the membranes are closed."""
    comp, n = ndimage.label(~np.asarray(boundary, bool))
    if n:
        areas = np.bincount(comp.ravel())
        comp[areas[comp] < min_area] = 0
    return comp.astype(np.int32)


def choose_min_area(
    boundaries: Sequence[np.ndarray],
    true_counts: Sequence[int],
    grid: Sequence[int] = (4, 8, 16, 32, 64, 128, 256),
    area_cap: float = float("inf"),
) -> int:
    """The minimum cell area whose enclosed-region counts have the lowest mean relative
    error against the annotated counts (validation images); ties to the smaller area.
    Areas above `area_cap` are not candidates (the smallest always is): a right count
    must not come from dropping real cells to offset split ones."""

    def error(area: int) -> float:
        errs = []
        for b, n in zip(boundaries, true_counts, strict=True):
            found = len(np.unique(enclosed_regions(b, area))) - 1
            errs.append(abs(found - n) / max(n, 1))
        return float(np.mean(errs))

    allowed = [a for a in grid if area_allowed(a, area_cap, grid)]
    return min(allowed, key=lambda a: (round(error(a), 9), a))


# Fewer annotated objects of a label than this, and counting rules chosen on them (a
# minimum area, neck cuts) rest on too little: small projects hash few images into
# validation (the demo's 40 images gave it 2, holding 1 platelet and no WBC).
MIN_RULE_OBJECTS = 10
# Where the rules of a version that recorded its basis (`instance_rule_objects`) were chosen.
RULE_BASIS = "validation and training images"


def thin_labels(found: dict[str, int]) -> dict[str, int]:
    """The labels of `found` (label: annotated objects a label's rules rest on) with fewer
    than `MIN_RULE_OBJECTS`."""
    return {lb: n for lb, n in found.items() if n < MIN_RULE_OBJECTS}


def thin_rules_warning(model: str, thin: dict[str, int], where: str) -> str:
    """What `count`, `models` and `status` say of a model version whose instance rules for
    the labels in `thin` (label: annotated objects) were chosen on `where`."""
    few = ", ".join(f"{lb} {n}" for lb, n in thin.items())
    return (
        f"{model}'s instance rules (minimum area, neck cuts) were chosen on {where} "
        f"holding few annotated objects ({few}; {MIN_RULE_OBJECTS} or more wanted): counts of "
        "these classes may be off; annotate more images or pin some to validation "
        "(`labelloop ingest --split val`), then retrain"
    )


def area_allowed(area: int, cap: float, grid: Sequence[int]) -> bool:
    """Whether a candidate minimum area may be tried under a cap from the annotated areas:
    within the cap, or the grid's smallest (some minimum area is always tried)."""
    return area <= cap or area == min(grid)


# The plain baseline every count metric is shown beside: a counter that ignores the image
# and says "the median number of annotated objects per training image" for every image.
# A model whose count MAE for a class is no better than that constant's has not shown that
# it counts the class: on BCCD, where many red cells have no box, both detectors counted
# red cells worse (MAE 3.82, 3.79) than the training median of 12 per image (3.15), while
# beating it by far on white cells and platelets (benchmarks/bccd_detection.py).
CONSTANT_MAE = "count_mae_constant"  # per class, beside "count_mae"
CONSTANT = "count_constant"  # per label, the constant itself


def add_count_baseline(
    result: dict[str, Any],
    labels: Sequence[str],
    train_counts: np.ndarray,
    true_counts: np.ndarray,
) -> dict[str, Any]:
    """`result` (an evaluation with `per_class` entries) with the constant of each label,
    the median of `train_counts` (training images, labels), and its count MAE per image on
    `true_counts` (evaluated images, labels), counted as the evaluation counts its truth.
    Unchanged without training or evaluated images."""
    train = np.asarray(train_counts, np.float64).reshape(-1, len(labels))
    truth = np.asarray(true_counts, np.float64).reshape(-1, len(labels))
    if not len(train) or not len(truth):
        return result
    constant = np.median(train, axis=0)
    mae = np.abs(truth - constant).mean(axis=0)
    per_class = result.setdefault("per_class", {})
    for i, name in enumerate(labels):
        per_class.setdefault(name, {})[CONSTANT_MAE] = round(float(mae[i]), 4)
    result[CONSTANT] = {name: float(constant[i]) for i, name in enumerate(labels)}
    return result


def counts_not_beaten(
    rows: Iterable[tuple[str, float | None, float | None, int | None]],
    constants: Mapping[str, float],
) -> dict[str, tuple[float, float, float]]:
    """Of rows (label, count MAE, constant's count MAE, true objects), the labels whose
    count MAE is no better than the constant's, as (MAE, constant's MAE, constant); labels
    without annotated objects are left out (both are right to say zero)."""
    return {
        lb: (float(mae), float(base), float(constants[lb]))
        for lb, mae, base, true in rows
        if mae is not None and base is not None and true and lb in constants and mae >= base
    }


def evaluation_not_beaten(metrics: Mapping[str, Any]) -> dict[str, tuple[float, float, float]]:
    """`counts_not_beaten` of a stored evaluation (segmentation stores `true_count`,
    detection `n_true`)."""
    rows = [
        (lb, e.get("count_mae"), e.get(CONSTANT_MAE), e.get("true_count", e.get("n_true")))
        for lb, e in (metrics.get("per_class") or {}).items()
        if e
    ]
    return counts_not_beaten(rows, metrics.get(CONSTANT) or {})


def constant_count_warning(model: str, beaten_not: Mapping[str, tuple[float, ...]]) -> str:
    """What `models` and `status` say of a model version whose counts of some classes are
    no better than a constant count per image (`counts_not_beaten`)."""
    few = "; ".join(
        f"{lb}: MAE {mae:.2f} against {base:.2f} for {const:g} per image"
        for lb, (mae, base, const) in beaten_not.items()
    )
    return (
        f"{model}'s counts of {', '.join(beaten_not)} are no closer to the annotations than "
        f"a constant count per image, the training images' median ({few}): they are not "
        "shown to follow the images; check that every such cell is annotated in the images "
        "compared (missing annotations make counts unmeasurable), or label more"
    )


def count_intervals(
    shapes: Iterable[Shape],
    labels: Sequence[str],
    z: float = 1.96,
    margin: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per label: the expected number of real objects among the predicted ones and an
    approximate 95 % interval, reading each object's `score` as the probability that it is
    a real cell (Poisson-binomial: mean = sum p, variance = sum p (1 - p); objects without
    a score count as certain). Cells the model missed entirely are not in it, so on its
    own the interval is about the objects found, not a bound on the truth; `margin` (per
    label, cells, `interval_margins`) widens both sides by what validation showed that
    reading leaves out."""
    mean = dict.fromkeys(labels, 0.0)
    var = dict.fromkeys(labels, 0.0)
    for sh in shapes:
        if sh.label not in mean:
            continue
        p = float(sh.attributes.get("score", 1.0))
        mean[sh.label] += p
        var[sh.label] += p * (1.0 - p)
    out: dict[str, dict[str, float]] = {}
    for lb in labels:
        sd = float(np.sqrt(var[lb]))
        half = z * sd + float((margin or {}).get(lb, 0.0))
        out[lb] = {
            "expected": round(mean[lb], 3),
            "low": round(max(0.0, mean[lb] - half), 3),
            "high": round(mean[lb] + half, 3),
            "sd": round(sd, 3),
        }
    return out


def total_interval(
    intervals: Sequence[Mapping[str, float]], margin: float = 0.0, z: float = 1.96
) -> dict[str, float] | None:
    """The interval of a label's count summed over images, from each image's interval
    (`count_intervals`, widened by `margin`). The objects' confidences are independent,
    so their variances add: the sd of the total is sqrt(sum sd^2), not the sum of the
    sds, which overstates it by up to sqrt(images). The margins, cells the model misses
    on an image, add in full: misses lean one way on every image, so they do not cancel.
    Intervals stored without an sd (before it was kept) are summed end to end, wider
    than need be but never narrower. None without any interval."""
    if not intervals:
        return None
    expected = sum(float(iv.get("expected", 0.0)) for iv in intervals)
    if not all("sd" in iv for iv in intervals):
        low = sum(float(iv["low"]) for iv in intervals)
        high = sum(float(iv["high"]) for iv in intervals)
        return {"expected": round(expected, 3), "low": round(low, 3), "high": round(high, 3)}
    half = z * float(np.sqrt(sum(float(iv["sd"]) ** 2 for iv in intervals)))
    half += margin * len(intervals)
    return {
        "expected": round(expected, 3),
        "low": round(max(0.0, expected - half), 3),
        "high": round(expected + half, 3),
    }


# The share of images whose annotated count a count interval claims to hold.
INTERVAL_COVERAGE = 0.95


def interval_basis(margin: Mapping[str, float] | None) -> str:
    """How count intervals were formed, in words for whoever reads them (`count`'s table,
    its report): calibrated ones claim INTERVAL_COVERAGE; uncalibrated ones must not seem
    to, since they leave out the cells the model misses and hold the truth less often."""
    if margin:
        cells = ", ".join(f"{lb} {m:g}" for lb, m in margin.items())
        return (
            "Intervals: the objects' confidences ± 1.96 sd, widened by margins chosen on "
            f"validation ({cells} cells per image) to hold the annotated count of "
            f"{INTERVAL_COVERAGE:.0%} of images"
        )
    return (
        "Intervals: the objects' confidences ± 1.96 sd only, not calibrated on validation "
        "(it held fewer than 19 images, or the model version predates calibration): they "
        "take each object found as a cell with the network's confidence in it, so they sit "
        "below the count where that confidence is low, and leave out the cells the model "
        f"misses; they hold the true count less often than {INTERVAL_COVERAGE:.0%}"
    )


def conformal_rank(n: int, coverage: float = INTERVAL_COVERAGE) -> int | None:
    """Which of n held-out excesses, smallest first (1-based), holds `coverage` of new
    images: ceil((n + 1) coverage); None when n images are too few to say."""
    k = math.ceil((n + 1) * coverage)
    return k if 0 < k <= n else None


# A test split's interval coverage is judged on this many images or more, and called too
# low below LOW_COVERAGE: with 20 images, intervals that truly hold 95 % of counts show
# below 80 % in 0.3 % of splits.
MIN_COVERAGE_IMAGES = 20
LOW_COVERAGE = 0.8


def intervals_not_held(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Per class, the coverage of the count intervals on a test split (stored by
    `training.intervals.add_interval_coverage`) where it is below LOW_COVERAGE on
    MIN_COVERAGE_IMAGES or more images; empty when the split is too small to say."""
    if (metrics.get("interval_images") or 0) < MIN_COVERAGE_IMAGES:
        return {}
    return {
        lb: c
        for lb, m in (metrics.get("per_class") or {}).items()
        if (c := (m or {}).get("interval_coverage")) is not None and c < LOW_COVERAGE
    }


def interval_coverage_warning(
    model: str, metrics: Mapping[str, Any], calibrated: bool
) -> str | None:
    """What a reader of a model version's count intervals must know when, on its test
    split (`metrics`), they held the annotated counts far less often than they claim
    (`intervals_not_held`); None when they held or the split is too small to say."""
    low = intervals_not_held(metrics)
    if not low:
        return None
    held = ", ".join(f"{lb} {c:.0%}" for lb, c in low.items())
    why = (
        "the margins chosen on validation did not carry over to the test split; check that "
        "both splits hold images alike"
        if calibrated
        else "they were not calibrated (validation held fewer than 19 images); pin images "
        "to validation (`ingest --split val`) and retrain"
    )
    return (
        f"{model}'s count intervals held the annotated count of only {held} of its "
        f"{metrics['interval_images']} test images, where they claim "
        f"{INTERVAL_COVERAGE:.0%}: read them as too narrow; {why}"
    )


def interval_margins(
    rows: Sequence[tuple[Mapping[str, Mapping[str, float]], Mapping[str, int]]],
    labels: Sequence[str],
    coverage: float = INTERVAL_COVERAGE,
) -> dict[str, float]:
    """Per label, the cells to add to both sides of `count_intervals` so that the interval
    holds the annotated count of at least `coverage` of images like these: rows are the
    (intervals, annotated counts) of held-out images. Split conformal prediction: each
    image's excess (how far its truth lies outside its interval, 0 inside) and the
    ceil((n + 1) coverage)-th smallest of them, which holds for a new image with
    probability >= coverage when images are exchangeable. Empty when there are too few
    images to say (fewer than 19 for 95 %)."""
    k = conformal_rank(len(rows), coverage)
    if k is None:
        return {}
    out: dict[str, float] = {}
    for lb in labels:
        excess = sorted(
            max(0.0, abs(truth[lb] - iv[lb]["expected"]) - (iv[lb]["high"] - iv[lb]["expected"]))
            for iv, truth in rows
        )
        out[lb] = round(excess[k - 1], 3)
    return out


def _check_masks(masks: np.ndarray, labels: Sequence[str]) -> None:
    if masks.ndim != 3 or masks.shape[0] != len(labels):
        raise ValueError(f"expected masks of shape ({len(labels)}, H, W), got {masks.shape}")
