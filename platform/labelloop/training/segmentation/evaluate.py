"""Held-out evaluation of a segmentation model: overlap per class, pixel error, counting
error and, in instance mode, instance matching.

Dice and IoU are micro over pixels per class: TP/FP/FN are summed over the whole split
before dividing, so an image where a class is absent from both prediction and truth adds
nothing instead of a 0/0. A class absent from the whole split (prediction and truth) has
no score (None) and is left out of the means. A class's pixel error is the fraction of
pixels whose foreground-vs-background decision for it is wrong, (FP + FN) / pixels; for a
single binary label such as ISBI membrane this is the usual "pixel error" (1 - pixel
accuracy). Results are plain JSON-able dicts; "mean_dice" is the primary metric in every
mode.

Count error compares the predicted count with the annotated objects of each image
(`objects.object_counts`), never with the connected components of the rasterised truth,
which merge touching cells just as a semantic prediction does; results say so in
"count_truth".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from torch import nn

from labelloop.domain import Shape
from labelloop.errors import InputError
from labelloop.geometry import rasterize_classes
from labelloop.kinds import kind_entry
from labelloop.objects import (
    COUNT_TRUTH,
    DEFAULT_MIN_AREA,
    MIN_RULE_OBJECTS,
    add_count_baseline,
    counts_from_instances,
    counts_from_label_map,
    counts_from_masks,
    object_counts,
    probs_to_label_map,
)
from labelloop.training.common import Fetch, item_record, item_shapes, split_items
from labelloop.training.segmentation.data import (
    load_shapes,
    rasterize_labels,
    segmentation_labels,
)
from labelloop.training.segmentation.instances import (
    choose_instance_rules,
    choose_split_areas,
    contour_mask,
    instances_from_probs,
    match_instances,
    rasterize_instances,
    semantic_map,
)
from labelloop.training.segmentation.predict import predict_outputs
from labelloop.training.segmentation.recipe import SegmentationRecipe

COUNTED = kind_entry("segmentation").counted_kinds
Instances = tuple[np.ndarray, np.ndarray]  # instance map (H, W) int32, classes per id


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


class _Tally:
    """Per-label sums over a split: pixel confusion, counts and instance matches."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        n = len(self.labels)
        self.tp, self.fp, self.fn = (np.zeros(n, np.int64) for _ in range(3))
        self.pixels = 0
        self.images = 0
        self.count_err = np.zeros(n, np.float64)
        self.true_count, self.pred_count = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.matched: np.ndarray | None = None

    def add(
        self,
        tp: np.ndarray,
        fp: np.ndarray,
        fn: np.ndarray,
        pixels: int,
        pred_counts: dict[str, int],
        true_counts: dict[str, int],
    ) -> None:
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.pixels += pixels
        self.images += 1
        pc = np.array([pred_counts[name] for name in self.labels])
        tc = np.array([true_counts[name] for name in self.labels])
        self.count_err += np.abs(pc - tc)
        self.pred_count += pc
        self.true_count += tc

    def add_matches(self, matched: np.ndarray) -> None:
        self.matched = matched if self.matched is None else self.matched + matched

    def result(self) -> dict[str, Any]:
        per_class: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(self.labels):
            tp, fp, fn = int(self.tp[i]), int(self.fp[i]), int(self.fn[i])
            entry: dict[str, Any] = {
                "dice": _ratio(2 * tp, 2 * tp + fp + fn),
                "iou": _ratio(tp, tp + fp + fn),
                "pixel_error": _ratio(fp + fn, self.pixels),
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "count_mae": _ratio(self.count_err[i], self.images),
                "true_count": int(self.true_count[i]),
                "pred_count": int(self.pred_count[i]),
            }
            if self.matched is not None:
                hit, n_p, n_t = int(self.matched[i]), entry["pred_count"], entry["true_count"]
                entry.update(
                    matched_50=hit,
                    precision_50=_ratio(hit, n_p),
                    recall_50=_ratio(hit, n_t),
                    f1_50=_ratio(2 * hit, n_p + n_t),
                )
            per_class[name] = entry
        out: dict[str, Any] = {
            "n_images": self.images,
            "mean_dice": _mean([c["dice"] for c in per_class.values()]),
            "mean_iou": _mean([c["iou"] for c in per_class.values()]),
            "pixel_error": _mean([c["pixel_error"] for c in per_class.values()]),
            "mean_count_mae": _mean([c["count_mae"] for c in per_class.values()]),
        }
        if self.matched is not None:
            out["mean_f1_50"] = _mean([c["f1_50"] for c in per_class.values()])
        out["per_class"] = per_class
        return out


def _confusion(pred: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    """Confusion matrix of two label maps in one bincount: row = truth, column = pred."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in size")
    flat = truth.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel()
    return np.bincount(flat, minlength=n * n)[: n * n].reshape(n, n)


def _check_pairs(
    preds: Sequence[Any], truths: Sequence[Any], true_counts: Sequence[dict[str, int]]
) -> None:
    if not len(preds) == len(truths) == len(true_counts):
        raise ValueError(
            f"{len(preds)} predictions for {len(truths)} ground truths "
            f"and {len(true_counts)} true counts"
        )


def segmentation_metrics(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    true_counts: Sequence[dict[str, int]],
    min_area: int = DEFAULT_MIN_AREA,
) -> dict[str, Any]:
    """Compare predicted and true label maps (uint8 (H, W), 0 = background) pairwise;
    predicted counts are connected components, true counts the annotated objects of each
    image (`true_counts`). Adds `pixel_accuracy` (all classes at once)."""
    _check_pairs(preds, truths, true_counts)
    n = len(labels) + 1
    tally = _Tally(labels)
    correct = total = 0
    for pred, truth, true in zip(preds, truths, true_counts, strict=True):
        cm = _confusion(pred, truth, n)
        diag = np.diag(cm)
        correct += int(diag.sum())
        total += int(truth.size)
        tally.add(
            diag[1:],
            (cm.sum(0) - diag)[1:],
            (cm.sum(1) - diag)[1:],
            int(truth.size),
            counts_from_label_map(pred, labels, min_area=min_area),
            true,
        )
    return {"pixel_accuracy": _ratio(correct, total), **tally.result()}


def binary_metrics(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    true_counts: Sequence[dict[str, int]],
    min_area: int = DEFAULT_MIN_AREA,
) -> dict[str, Any]:
    """Compare per-label masks (L, H, W) bool pairwise (binary mode: labels may overlap);
    true counts as in `segmentation_metrics`. `pixel_accuracy` is 1 - pixel_error, the
    mean over labels."""
    _check_pairs(preds, truths, true_counts)
    tally = _Tally(labels)
    for pred, truth, true in zip(preds, truths, true_counts, strict=True):
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in size")
        p, t = pred.astype(bool), truth.astype(bool)
        dims = (1, 2)
        tally.add(
            (p & t).sum(dims),
            (p & ~t).sum(dims),
            (~p & t).sum(dims),
            int(t[0].size),
            counts_from_masks(p, labels, min_area=min_area),
            true,
        )
    result = tally.result()
    error = result["pixel_error"]
    return {"pixel_accuracy": None if error is None else 1.0 - error, **result}


def instance_metrics(
    preds: Sequence[Instances],
    truths: Sequence[Instances],
    labels: Sequence[str],
    *,
    true_counts: Sequence[dict[str, int]],
    iou: float = 0.5,
) -> dict[str, Any]:
    """Compare instance maps pairwise: overlap of the label maps they imply, predicted
    instances against annotated objects (`true_counts`), and per label precision / recall /
    F1 of instances matched at IoU > `iou` (recall over the annotated objects, so a cell
    painted over entirely in the truth raster still counts as missed)."""
    _check_pairs(preds, truths, true_counts)
    n = len(labels) + 1
    tally = _Tally(labels)
    correct = total = 0
    for (p_inst, p_cls), (t_inst, t_cls), true in zip(preds, truths, true_counts, strict=True):
        cm = _confusion(semantic_map(p_inst, p_cls), semantic_map(t_inst, t_cls), n)
        diag = np.diag(cm)
        correct += int(diag.sum())
        total += int(t_inst.size)
        tally.add(
            diag[1:],
            (cm.sum(0) - diag)[1:],
            (cm.sum(1) - diag)[1:],
            int(t_inst.size),
            counts_from_instances(p_cls, labels),
            true,
        )
        tally.add_matches(match_instances(p_inst, p_cls, t_inst, t_cls, n - 1, iou=iou)[1:])
    return {"pixel_accuracy": _ratio(correct, total), **tally.result()}


def _truth(
    item: dict[str, Any], shapes: Sequence[Shape], labels: Sequence[str], hw: tuple, mode: str
) -> Any:
    """The ground truth of one item in the form the mode's metrics compare."""
    h, w = hw
    try:
        if mode == "binary":
            return rasterize_labels(shapes, labels, h, w).transpose(2, 0, 1) > 0
        if mode == "instance":
            return rasterize_instances(shapes, labels, h, w)
        return rasterize_classes(shapes, labels, h, w)
    except ValueError as exc:
        raise InputError(
            f"bad annotation: {exc}", file=item["blob_key"], record=item_record(item)
        ) from exc


def evaluate_segmentation(
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    split: str = "test",
    labels: Sequence[str] | None = None,
    *,
    recipe: SegmentationRecipe | None = None,
    batch_size: int = 8,
    min_area: int = DEFAULT_MIN_AREA,
) -> dict[str, Any]:
    """Predict every image of `split` at full resolution and score it against its shapes,
    the way the recipe's mode reads the network (default: multiclass).

    `labels` defaults to the manifest's and must be in the order the model was trained on.
    """
    labels = list(labels) if labels is not None else segmentation_labels(manifest)
    recipe = (recipe or SegmentationRecipe()).model_copy(update={"batch_size": batch_size})
    preds: list[Any] = []
    truths: list[Any] = []
    true_counts: list[dict[str, int]] = []
    items = split_items(manifest, split)
    rules = recipe.instance_rules(labels)
    # Chunked so memory stays bounded by one batch of images and probabilities.
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        loaded = [load_shapes(it, fetch) for it in chunk]
        outputs = predict_outputs(model, [img for img, _ in loaded], recipe)
        for item, (image, shapes), probs in zip(chunk, loaded, outputs, strict=True):
            if recipe.mode == "binary":
                preds.append(probs > 0.5)
            elif recipe.mode == "instance":
                preds.append(instances_from_probs(probs, len(labels), **rules))
            else:
                preds.append(probs_to_label_map(probs))
            truths.append(_truth(item, shapes, labels, image.shape[:2], recipe.mode))
            true_counts.append(object_counts(shapes, labels, COUNTED))
    if recipe.mode == "binary":
        result = binary_metrics(preds, truths, labels, true_counts=true_counts, min_area=min_area)
    elif recipe.mode == "instance":
        result = instance_metrics(preds, truths, labels, true_counts=true_counts)
    else:
        result = segmentation_metrics(
            preds, truths, labels, true_counts=true_counts, min_area=min_area
        )
    if recipe.mode == "instance":
        result["instance_rules"] = {k: dict(zip(labels, v, strict=True)) for k, v in rules.items()}
    add_count_baseline(
        result,
        labels,
        [annotated_counts(item_shapes(it), labels) for it in split_items(manifest, "train")],
        [[c[lb] for lb in labels] for c in true_counts],
    )
    result["split"] = split
    result["mode"] = recipe.mode
    result["count_truth"] = COUNT_TRUTH
    return result


# A minimum area may drop at most this share of the annotated objects of its label (on
# the validation split, by the area each has in the rasterised truth).
AREA_CAP_QUANTILE = 0.05


def annotated_area_cap(areas: Sequence[int]) -> float:
    """The largest minimum area that keeps all but the smallest `AREA_CAP_QUANTILE` of
    these annotated areas (no bound without any)."""
    return (
        float(np.quantile(areas, AREA_CAP_QUANTILE, method="lower")) if len(areas) else float("inf")
    )


# For a label with fewer than `objects.MIN_RULE_OBJECTS` annotated objects in the
# validation split, training images join its basis in manifest order until it holds this
# many, at most `RULE_TRAIN_IMAGES` of them (the choice reads every image under every
# candidate rule, so its cost grows with the images).
RULE_BASIS_OBJECTS = 50
RULE_TRAIN_IMAGES = 64


def annotated_counts(shapes: Sequence[Shape], labels: Sequence[str]) -> np.ndarray:
    """An image's annotated objects per label, in label order (`objects.object_counts`)."""
    counts = object_counts(shapes, labels, COUNTED)
    return np.array([counts[lb] for lb in labels], np.int64)


class RuleBasis(NamedTuple):
    items: list[dict[str, Any]]
    use: np.ndarray  # bool (items, labels): whether an item counts for a label
    pooled: np.ndarray  # bool (labels): training images joined the label's basis
    counts: np.ndarray  # int (items, labels): each item's annotated objects


def rule_basis(manifest: dict[str, Any], labels: Sequence[str]) -> RuleBasis:
    """The items instance rules are chosen on, and per item and label whether it counts
    for that label: the validation split for every label and, for a label with fewer than
    `MIN_RULE_OBJECTS` annotated objects there, training images too (see
    `RULE_BASIS_OBJECTS`). One or two validation objects decide a label's minimum area and
    reading poorly: on a demo-sized split (2 validation images) platelets were counted
    7.9 % under on 50 test images, and 1.3 % under with training images in their basis
    (`benchmarks/cell_counts.py`)."""
    val = split_items(manifest, "val")
    found = [annotated_counts(item_shapes(it), labels) for it in val]
    held = sum(found, np.zeros(len(labels), np.int64))
    thin = held < MIN_RULE_OBJECTS
    items, use = list(val), [np.ones(len(labels), bool) for _ in val]
    if thin.any():
        for item in split_items(manifest, "train")[:RULE_TRAIN_IMAGES]:
            if (held[thin] >= RULE_BASIS_OBJECTS).all():
                break
            items.append(item)
            use.append(thin.copy())
            found.append(annotated_counts(item_shapes(item), labels))
            held += found[-1] * thin
    use_map = np.array(use, bool).reshape(len(items), len(labels))
    counts = np.array(found, np.int64).reshape(len(items), len(labels))
    return RuleBasis(items, use_map, use_map[len(val) :].any(axis=0), counts)


def tune_instance_rules(
    model: nn.Module,
    manifest: dict[str, Any],
    fetch: Fetch,
    *,
    labels: Sequence[str],
    recipe: SegmentationRecipe,
) -> SegmentationRecipe:
    """The recipe with instance mode's per-label reading (minimum area, split depth,
    opening, seed threshold, components) chosen on the validation split
    (`instances.choose_instance_rules`), with training images for labels it holds too
    few of (`rule_basis`), the area above which a blob is cut at its neck
    (`instances.choose_split_areas`), and the number of annotated objects each label's
    rules rest on (`instance_rule_objects`); unchanged outside instance mode, when the
    recipe opts out or there is nothing to choose on."""
    if recipe.mode != "instance" or not recipe.tune_instances:
        return recipe
    items, use, pooled, counts = rule_basis(manifest, labels)
    if not items:
        return recipe
    probs: list[np.ndarray] = []
    areas: list[list[int]] = [[] for _ in labels]
    interiors: list[list[int]] = [[] for _ in labels]  # the same objects less their contour
    for item, used in zip(items, use, strict=True):
        image, shapes = load_shapes(item, fetch)
        probs.append(predict_outputs(model, [image], recipe)[0])
        inst, classes = _truth(item, shapes, labels, image.shape[:2], "instance")
        inner = np.bincount(inst[~contour_mask(inst)], minlength=len(classes))
        for k, area in enumerate(np.bincount(inst.ravel(), minlength=len(classes))[1:], 1):
            # An object painted over entirely by another has no area of its own.
            if area and used[classes[k] - 1]:
                areas[classes[k] - 1].append(int(area))
                interiors[classes[k] - 1].append(int(inner[k]))
    # A network reads the images it trained on more cleanly than new ones: its blobs there
    # are smoother and rounder, so a neck cut they ask for over-splits new cells (white
    # cells split at 0.5 px on training images came out 8 % over on test images, against
    # 0 % uncut). A label whose basis holds training images is read without cuts; its
    # minimum area and reading (watershed or components) are still chosen there.
    edges = recipe.instance_rules(labels)["edge_share"]
    rules = choose_instance_rules(
        probs,
        counts,
        len(labels),
        area_caps=[annotated_area_cap(a) for a in areas],
        use=use,
        cuts=~pooled,
        edge_share=edges,
    )
    # Blobs larger than every annotated object of their label are cut at their necks, a
    # bound taken only from a label with enough objects to show its size range. Seeds are
    # interiors (what the network learned to call interior: an object less its contour
    # ring, `instance_targets`), so they are held to the largest annotated interior; a
    # label read as components to the largest whole object. Held to whole objects, the
    # merged pair of white cells on the demo's test split (annotated 1,655 and 846 px)
    # seeded a 1,691 px interior, 3 px above the largest annotated white cell, and whether
    # it was cut hung on the network's contour width.
    largest = [
        max(whole if apart else inner) if len(whole) >= MIN_RULE_OBJECTS else 0
        for whole, inner, apart in zip(areas, interiors, rules.components, strict=True)
    ]
    split_area = choose_split_areas(
        probs, counts, len(labels), rules, largest, use=use, edge_share=edges
    )
    held = (counts * use).sum(axis=0)
    apart = [lb for lb, c in zip(labels, rules.components, strict=True) if c]
    return recipe.model_copy(
        update={
            "instance_min_area": dict(zip(labels, rules.min_area, strict=True)),
            "instance_split_depth": dict(zip(labels, rules.split_depth, strict=True)),
            "instance_components": apart or None,
            "instance_opening": {lb: r for lb, r in zip(labels, rules.opening, strict=True) if r}
            or None,
            "instance_split_area": {lb: a for lb, a in zip(labels, split_area, strict=True) if a}
            or None,
            "instance_seed_threshold": {
                lb: t for lb, t in zip(labels, rules.seed_threshold, strict=True) if t
            }
            or None,
            "instance_rule_objects": dict(zip(labels, map(int, held), strict=True)),
        }
    )
