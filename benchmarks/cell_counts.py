"""Cell counts against annotated objects: synthetic smears and ISBI 2012 cells.

Every count here is compared with the number of annotated objects (one per polygon /
mask instance), never with connected components of a rasterised truth.

Part `smears`: the demo's synthetic blood smears (labelloop.synthetic; polygons and brush
masks, boxes left out), one model in instance mode and one in multiclass (semantic) mode,
trained for the same number of epochs; per class on the test split: count relative
error of the totals, count MAE per image, and instance F1 at IoU 0.5; beside them, a
constant count per image (the training images' median, `objects.add_count_baseline`).

Part `isbi`: ISBI 2012's 30 labelled slices; the annotated cells are the connected regions
of each label mask's cell interior (255), 3,431 in all, as `labelloop ingest` reads them.
Slices 0-21 train, 22-24 validation, 25-29 test (`--val N`: the N slices before the test
slices; `--val-spread`: N slices spread evenly over 0-24 instead). Compared with the same
epochs per model:
- instance: labelloop's instance mode trained on the cells (interior + contour,
  watershed);
- membranes, semantic: a binary membrane model; cells are the connected regions of the
  non-membrane pixels (what a semantic cell mask gives: any gap in a membrane merges two
  cells);
- membranes, contours: the same model, regions below a minimum area (chosen on the
  validation slices) dropped;
- classical: Otsu threshold + distance-transform watershed (scikit-image), marker distance
  and minimum area chosen on the validation slices; no training;
- constant: every test slice given the median cell count of the training slices, the plain
  baseline every count is shown beside (counts only, no cells to match).
Each trained network is also read from the mean of its 8 flipped / turned views (recipe
`tta`, rows ", TTA"), with its own rules chosen on validation from those views.
The instance network's test slices are also read with fixed readings, whatever validation
chose (`fixed_readings`): seeds from the most likely class or from each seed threshold,
at 16 and 32 px; `--save-outputs NPZ` keeps its validation and test outputs, which
`isbi_readings.py` reads with every reading the rule choice tries.
Per test slice: predicted and true cells, count relative error; over the test slices:
instance precision / recall / F1 at IoU 0.5.

Compute: each part reports wall and CPU seconds (user + system of this process); run it
niced on a shared machine.

Usage: .venv/bin/python benchmarks/cell_counts.py --part smears|isbi [--epochs N] [--name STEM]
       [--images TRAIN VAL TEST] (smears)
       [--val N] [--val-spread] [--input-scale S] [--save-outputs NPZ] (isbi)
Writes benchmarks/results/cell_counts_<part>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import (  # noqa: E402
    ISBI,
    _isbi_pair,
    _item,
    isbi_manifest,
    membrane_offset,
    shift_image,
    synthetic_manifest,
)
from benchmarks.intervals import interval_figures  # noqa: E402
from labelloop.counting.overlay import draw_overlay  # noqa: E402
from labelloop.imaging import decode_image, encode_png  # noqa: E402
from labelloop.ingest.readers.masks import instance_masks  # noqa: E402
from labelloop.objects import (  # noqa: E402
    choose_min_area,
    counts_from_instances,
    enclosed_regions,
    instance_shapes,
    object_counts,
)
from labelloop.training.common import item_shapes, split_items  # noqa: E402
from labelloop.training.segmentation.data import load_shapes  # noqa: E402
from labelloop.training.segmentation.evaluate import (  # noqa: E402
    COUNTED,
    annotated_area_cap,
    evaluate_segmentation,
)
from labelloop.training.segmentation.instances import (  # noqa: E402
    instances_from_probs,
    match_instances,
    rasterize_instances,
)
from labelloop.training.segmentation.kind import KIND  # noqa: E402
from labelloop.training.segmentation.predict import predict_outputs  # noqa: E402
from labelloop.training.segmentation.recipe import SegmentationRecipe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TEST = range(25, 30)
TARGET_REL_ERROR = 0.05
TARGET_F1 = 0.85
# Budgets are epochs, not wall-clock time: on a shared machine a time budget buys fewer
# steps the busier it is. This cap only stops a run that would never end.
MAX_TIME_S = 3600


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def train(manifest: dict, fetch: Any, recipe: SegmentationRecipe, labels: list[str]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        outcome = KIND.train(manifest, recipe, fetch, Path(tmp))
        return KIND.load(outcome.weights_path, recipe, labels), outcome.epochs_completed


def rel(pred: float, true: float) -> float | None:
    return round(abs(pred - true) / true, 4) if true else None


# --- smears -------------------------------------------------------------------------


def smears(epochs: int, images: dict[str, int], overlay: Path, seed: int = 0) -> dict:
    manifest, fetch = synthetic_manifest(images, seed=seed)
    labels = manifest["labels"]
    out: dict[str, Any] = {"images": images, "seed": seed, "models": {}}
    for mode in ("instance", "multiclass"):
        recipe = SegmentationRecipe.from_dict(
            {"mode": mode, "epochs": epochs, "max_time_s": MAX_TIME_S, "seed": seed}
        )
        t0, c0 = time.monotonic(), cpu_seconds()
        model, done = train(manifest, fetch, recipe, labels)
        if mode == "instance":
            # The default reading first, then the rules a run chooses on val (what the
            # model version stores and `count` uses).
            m = evaluate_segmentation(model, manifest, fetch, "test", labels, recipe=recipe)
            out["models"]["instance, default rules"] = _smear_scores(m, done, t0, c0)
            # Rules chosen as before training images joined the basis of labels that
            # validation holds few of (`evaluate.rule_basis`): validation alone.
            held_out = {
                **manifest,
                "items": [i for i in manifest["items"] if i["split"] != "train"],
            }
            alone = KIND.calibrate(model, held_out, fetch, labels=labels, recipe=recipe)
            m = evaluate_segmentation(model, manifest, fetch, "test", labels, recipe=alone)
            row = {**_smear_scores(m, done, t0, c0), "rule_objects": alone.instance_rule_objects}
            out["models"]["instance, rules chosen on val alone"] = row
            whole = _edge_held_whole(model, manifest, fetch, labels, recipe)
            m = evaluate_segmentation(model, manifest, fetch, "test", labels, recipe=whole)
            out["models"][EDGE_ROW] = _smear_scores(m, done, t0, c0)
            tuned = KIND.calibrate(model, manifest, fetch, labels=labels, recipe=recipe)
            plot_overlays(model, manifest, fetch, labels, recipe, tuned, overlay)
            recipe = tuned
        m = evaluate_segmentation(model, manifest, fetch, "test", labels, recipe=recipe)
        out["models"][mode] = _smear_scores(m, done, t0, c0)
        if mode == "instance":
            out["models"][mode]["rules"] = m["instance_rules"]
            out["models"][mode]["rule_objects"] = recipe.instance_rule_objects
            # Count intervals from the objects' confidences alone, and widened by the
            # margins a training run chooses on validation (`training.intervals`).
            out["models"][mode].update(
                interval_figures(KIND, model, manifest, fetch, labels, recipe)
            )
            # The same network and rules without cutting blobs larger than the largest
            # annotated object of their label (`instances.cut_oversized`).
            uncut = recipe.model_copy(update={"instance_split_area": None})
            m = evaluate_segmentation(model, manifest, fetch, "test", labels, recipe=uncut)
            out["models"][UNCUT_ROW] = _smear_scores(m, done, t0, c0)
    out["models"][CONSTANT_ROW] = _constant_scores(m)
    return out


UNCUT_ROW = "instance, no cut above the largest annotated object"
EDGE_HELD = "edge cells held to the whole minimum area"
EDGE_ROW = f"instance, {EDGE_HELD}"


def _edge_held_whole(
    model: Any, manifest: dict, fetch: Any, labels: list[str], recipe: SegmentationRecipe
) -> SegmentationRecipe:
    """The recipe with its rules chosen (and read) with cells on the image's edge held to
    the whole minimum area, as before `objects.EDGE_AREA_SHARE`: the row it is measured
    against."""
    whole = recipe.model_copy(update={"instance_edge_share": 1.0})
    return KIND.calibrate(model, manifest, fetch, labels=labels, recipe=whole)


# The plain baseline beside every count (`objects.add_count_baseline`, stored by every
# evaluation): a constant count per image, the median of the training images.
CONSTANT_ROW = "constant (median count per training image)"


def _constant_scores(m: dict) -> dict:
    """The constant's row from an evaluation: its count per image and class, the total it
    gives the test split, and its count MAE per image."""
    n = m["n_images"]
    per_class = {}
    for lb, c in m["per_class"].items():
        const = m["count_constant"][lb]
        per_class[lb] = {
            "true": c["true_count"],
            "constant": const,
            "predicted": const * n,
            "relative_error": rel(const * n, c["true_count"]),
            "count_mae": c["count_mae_constant"],
        }
    return {"per_class": per_class}


def _smear_scores(m: dict, epochs: int, t0: float, c0: float) -> dict:
    return {
        "epochs": epochs,
        "wall_s": round(time.monotonic() - t0, 1),
        "cpu_s": round(cpu_seconds() - c0, 1),
        "mean_dice": m["mean_dice"],
        "per_class": {
            lb: {
                "true": c["true_count"],
                "predicted": c["pred_count"],
                "relative_error": rel(c["pred_count"], c["true_count"]),
                "count_mae": c["count_mae"],
                "f1_50": c.get("f1_50"),
            }
            for lb, c in m["per_class"].items()
        },
    }


def plot_overlays(
    model: Any,
    manifest: dict,
    fetch: Any,
    labels: list[str],
    default: SegmentationRecipe,
    tuned: SegmentationRecipe,
    path: Path,
) -> None:
    """The test image with the most annotated objects, its instances read with the default
    and with the chosen rules beside the annotated objects (outline and index per object)."""
    loaded = [load_shapes(it, fetch) for it in split_items(manifest, "test")]
    image, shapes = max(loaded, key=lambda x: len(x[1]))
    (probs,) = predict_outputs(model, [image], default)
    panels = []
    for recipe in (default, tuned):
        inst, classes = instances_from_probs(probs, len(labels), **recipe.instance_rules(labels))
        found = instance_shapes(inst, classes, labels)
        panels.append(draw_overlay(image, found, counts_from_instances(classes, labels), labels))
    panels.append(draw_overlay(image, shapes, object_counts(shapes, labels, COUNTED), labels))
    titles = ["instance, default rules", "instance, rules chosen on val", "annotated objects"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for ax, png, title in zip(axes, panels, titles, strict=True):
        ax.imshow(decode_image(png))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_smears(result: dict, path: Path) -> None:
    labels = list(next(iter(result["models"].values()))["per_class"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    n = len(result["models"])
    width = 0.8 / n
    top = 0.6  # bars above it are cut, their value written at the top
    for k, (mode, m) in enumerate(result["models"].items()):
        errs = [m["per_class"][lb]["relative_error"] or 0 for lb in labels]
        x = np.arange(len(labels)) + (k - (n - 1) / 2) * width
        name = f"{mode}, rules chosen (val; + train where val is thin)" if "rules" in m else mode
        name += f" ({m['epochs']} epochs)" if "epochs" in m else ", no model"
        ax.bar(x, np.minimum(errs, top), width, label=name)
        for xi, e in zip(x, errs, strict=True):
            ax.text(xi, min(e, top), f"{e:.1%}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, top * 1.1)
    ax.axhline(TARGET_REL_ERROR, color="k", ls=":", lw=1, label="target 5 %")
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel("count relative error (test totals)")
    ax.set_title("synthetic smears: counts vs annotated objects, same budget", fontsize=10)
    # Below the axes: over them, the legend hid the bars of a run with many rows.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# --- ISBI -----------------------------------------------------------------------------


def val_slices(n_val: int, spread: bool = False) -> tuple[int, ...]:
    """The validation slices: the `n_val` just before the test slices, or (`spread`) one
    from the middle of each of `n_val` equal stretches of slices 0-24, so that the rules
    are chosen on slices from over the whole stack, as a project's hashed split draws them."""
    if not 0 < n_val < TEST.start:
        raise ValueError(f"--val {n_val}: between 1 and {TEST.start - 1} validation slices")
    if spread:
        return tuple(int((k + 0.5) * TEST.start / n_val) for k in range(n_val))
    return tuple(range(TEST.start - n_val, TEST.start))


def isbi_cells_manifest(shift: tuple[float, float], val: Sequence[int]) -> tuple[dict, Any]:
    """ISBI slices with one Mask per annotated cell (label 'cell')."""
    blobs: dict[str, bytes] = {}
    items = []
    for i in range(30):
        gray, membrane = _isbi_pair(i)
        image = encode_png(np.repeat(shift_image(gray, *shift)[..., None], 3, axis=2))
        cells = instance_masks((~membrane).astype(np.uint8), {1: "cell"})
        split = "test" if i in TEST else "val" if i in val else "train"
        items.append(_item(blobs, image, split, cells, f"isbi-{i}"))
    manifest = {
        "version": 1,
        "project": {"name": "isbi-cells", "task": "segmentation"},
        "labels": ["cell"],
        "split_seed": 0,
        "items": items,
    }
    return manifest, blobs.__getitem__


def isbi_recipe(mode: str, epochs: int, input_scale: float, seed: int = 0) -> SegmentationRecipe:
    return SegmentationRecipe.from_dict(
        {
            "mode": mode,
            "encoder": "resnet18",
            "encoder_depth": 4,
            "image_size": 256,
            "batch_size": 8,
            "repeats": 8,
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "class_weights": "none",
            "distortion": 0.5,
            "input_scale": input_scale,
            "precision": "auto",
            "scheduler": "onecycle",
            "epochs": epochs,
            "max_time_s": MAX_TIME_S,
            "seed": seed,
            "augment": {
                "flips": True,
                "rot90": True,
                "scale": 0.15,
                "brightness_contrast": 0.2,
                "hue_shift": 0,
                "saturation_shift": 0,
                "blur": 0.1,
            },
        }
    )


def classical(gray: np.ndarray, min_distance: int, min_area: int) -> np.ndarray:
    """Otsu on the smoothed slice (cells bright, membranes dark), then a watershed of the
    distance transform from its local maxima (scikit-image)."""
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(gray.astype(np.float32) / 255.0, sigma=1.5)
    fg = smooth > threshold_otsu(smooth)
    dist = ndimage.distance_transform_edt(fg)
    comp, _ = ndimage.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comp, exclude_border=False)
    markers = np.zeros(gray.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    inst = watershed(-dist, markers, mask=fg)
    if inst.max():
        areas = np.bincount(inst.ravel())
        inst[areas[inst] < min_area] = 0
    return inst


def score_slices(preds: list[np.ndarray], truths: list[tuple], counts: list[int]) -> dict:
    """Per slice predicted vs annotated cells; F1 at IoU 0.5 over all slices."""
    hit = n_pred = 0
    per = []
    for inst, (t_inst, t_cls), true in zip(preds, truths, counts, strict=True):
        ids = np.unique(inst[inst > 0])
        lut = np.zeros(int(inst.max()) + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1)
        p = lut[inst]
        cls = np.ones(len(ids) + 1, np.int32)
        cls[0] = 0
        hit += int(match_instances(p, cls, t_inst, t_cls, 1)[1])
        n_pred += len(ids)
        per.append({"predicted": len(ids), "true": true, "relative_error": rel(len(ids), true)})
    n_true = sum(counts)
    errs = [s["relative_error"] for s in per]
    return {
        "slices": per,
        "mean_relative_error": round(float(np.mean(errs)), 4),
        "max_relative_error": round(float(np.max(errs)), 4),
        "total_relative_error": rel(n_pred, n_true),
        "precision_50": round(hit / n_pred, 4) if n_pred else None,
        "recall_50": round(hit / n_true, 4),
        "f1_50": round(2 * hit / (n_pred + n_true), 4),
    }


def cell_areas(maps: list[tuple]) -> list[int]:
    """Pixel areas of the annotated cells in these (instance map, classes) pairs."""
    return [int(a) for inst, _ in maps for a in np.bincount(inst.ravel())[1:] if a]


def isbi(
    epochs: int,
    train_models: bool = True,
    n_val: int = 3,
    input_scale: float = 0.5,
    instance_only: bool = False,
    seed: int = 0,
    save_outputs: Path | None = None,
    val_spread: bool = False,
) -> dict:
    val = val_slices(n_val, val_spread)
    train_ids = [i for i in range(30) if i not in TEST and i not in val]
    dy, dx = membrane_offset(train_ids)
    shift = (-dy, -dx)
    cells, fetch = isbi_cells_manifest(shift, val)
    truth: dict[str, list] = {"val": [], "test": []}
    grays: dict[str, list] = {"val": [], "test": []}
    images: dict[str, list] = {"val": [], "test": []}
    for split in ("val", "test"):
        for it in split_items(cells, split):
            img, shapes = load_shapes(it, fetch)
            images[split].append(img)
            grays[split].append(img[..., 0])
            truth[split].append(
                (
                    rasterize_instances(shapes, ["cell"], *img.shape[:2]),
                    object_counts(shapes, ["cell"], ("mask",))["cell"],
                )
            )
    t_maps = {k: [t for t, _ in v] for k, v in truth.items()}
    t_counts = {k: [c for _, c in v] for k, v in truth.items()}
    out: dict[str, Any] = {
        "test_slices": list(TEST),
        "val_slices": list(val),
        "input_scale": input_scale,
        "seed": seed,
        "annotated_cells_test": sum(t_counts["test"]),
        "methods": {},
    }

    if train_models:
        _isbi_models(
            out,
            cells,
            fetch,
            images,
            t_maps,
            t_counts,
            shift,
            epochs,
            val,
            input_scale,
            instance_only=instance_only,
            seed=seed,
            save_outputs=save_outputs,
        )

    # The plain baseline: every test slice given the median cells of the training slices.
    per_train = [
        object_counts(item_shapes(it), ["cell"], ("mask",))["cell"]
        for it in split_items(cells, "train")
    ]
    const = float(np.median(per_train))
    slices = [
        {"predicted": const, "true": t, "relative_error": rel(const, t)} for t in t_counts["test"]
    ]
    out["methods"]["constant (median cells per training slice)"] = {
        "slices": slices,
        "constant": const,
        "mean_relative_error": round(float(np.mean([s["relative_error"] for s in slices])), 4),
        "max_relative_error": round(float(np.max([s["relative_error"] for s in slices])), 4),
        "total_relative_error": rel(const * len(slices), sum(t_counts["test"])),
        "f1_50": None,  # no cells, only a number
    }

    # Classical baseline, parameters chosen on val.
    t0, c0 = time.monotonic(), cpu_seconds()
    # Not bounded by the annotated areas as the trained methods are: a baseline at its
    # best count on validation.
    params = [(d, a) for d in (5, 10, 20, 30) for a in (32, 128, 512)]
    val_cls = {
        p: score_slices([classical(g, *p) for g in grays["val"]], t_maps["val"], t_counts["val"])[
            "mean_relative_error"
        ]
        for p in params
    }
    d, a = min(params, key=lambda p: val_cls[p])
    out["methods"]["classical"] = {
        **score_slices(
            [classical(g, d, a) for g in grays["test"]], t_maps["test"], t_counts["test"]
        ),
        "min_distance": d,
        "min_area": a,
        "wall_s": round(time.monotonic() - t0, 1),
        "cpu_s": round(cpu_seconds() - c0, 1),
    }
    return out


def _pooled(split: str) -> str:
    """Training slices count as validation ones (the rule choice reads only those)."""
    return "val" if split == "train" else split


def _read_cells(probs: list, recipe: SegmentationRecipe, maps: list, counts: list) -> dict:
    """Test slices' cells read from instance-mode outputs with the recipe's rules, scored
    against the annotated cells, with the rules."""
    rules = recipe.instance_rules(["cell"])
    preds = [instances_from_probs(p, 1, **rules)[0] for p in probs]
    return {**score_slices(preds, maps, counts), "rules": rules}


# Fixed readings of the same network, whatever validation chose: most likely interior
# (0) against seed thresholds, at two minimum areas within the annotated-area bound.
FIXED_THRESHOLDS = (0.0, 0.6, 0.7, 0.8)
FIXED_AREAS = (16, 32)


def _fixed_readings(probs: list, maps: list, counts: list) -> list[dict]:
    """Test slices read with each seed threshold and minimum area (no other cut): what a
    threshold changes on one network, apart from the choice among readings."""
    rows = []
    for sure in FIXED_THRESHOLDS:
        for area in FIXED_AREAS:
            preds = [
                instances_from_probs(p, 1, min_area=area, seed_threshold=sure)[0] for p in probs
            ]
            rows.append(
                {"seed_threshold": sure, "min_area": area, **score_slices(preds, maps, counts)}
            )
    return rows


def _save_outputs(path: Path, probs: dict, maps: dict, counts: dict, val: Sequence[int]) -> None:
    """One network's outputs per split (float16) beside the annotated cells (instance maps
    and counts) and which slices were validation, so that readings can be compared on
    them without training again."""
    arrays: dict[str, np.ndarray] = {"val_slices": np.asarray(val, np.int64)}
    for split, p in probs.items():
        arrays[split] = np.stack(p).astype(np.float16)
        arrays[f"{split}_maps"] = np.stack([inst for inst, _ in maps[split]])
        arrays[f"{split}_counts"] = np.asarray(counts[split], np.int64)
    np.savez_compressed(path, **arrays)


def _isbi_models(
    out: dict,
    cells: dict,
    fetch: Any,
    images: dict,
    t_maps: dict,
    t_counts: dict,
    shift: tuple[float, float],
    epochs: int,
    val: Sequence[int],
    input_scale: float,
    *,
    instance_only: bool = False,
    seed: int = 0,
    save_outputs: Path | None = None,
) -> None:
    """Instance mode on the cells; a membrane model read as regions and as contours
    (`instance_only`: instance mode from one view alone; `save_outputs`: an .npz of the
    instance network's validation and test outputs, for `isbi_readings.py`)."""
    # Instance mode on the cells, read from one view and from the mean of the 8 flipped /
    # turned views (recipe `tta`), each with its own rules chosen on validation; and from
    # one view with rules chosen on the training slices too (a larger basis that the
    # network reads more cleanly than new slices).
    recipe = isbi_recipe("instance", epochs, input_scale, seed)
    t0, c0 = time.monotonic(), cpu_seconds()
    model, done = train(cells, fetch, recipe, ["cell"])
    pooled = {**cells, "items": [{**i, "split": _pooled(i["split"])} for i in cells["items"]]}
    readings = [("instance", False, cells)]
    if not instance_only:
        readings += [
            ("instance, TTA", True, cells),
            ("instance, rules chosen on val + train", False, pooled),
        ]
    for name, tta, basis in readings:
        viewed = recipe.model_copy(update={"tta": tta})
        tuned = KIND.calibrate(model, basis, fetch, labels=["cell"], recipe=viewed)
        probs = predict_outputs(model, images["test"], tuned)
        out["methods"][name] = {
            **_read_cells(probs, tuned, t_maps["test"], t_counts["test"]),
            "epochs": done,
            "wall_s": round(time.monotonic() - t0, 1),
            "cpu_s": round(cpu_seconds() - c0, 1),
        }
        whole = _edge_held_whole(model, basis, fetch, ["cell"], viewed)
        out["methods"][f"{name}, {EDGE_HELD}"] = _read_cells(
            probs, whole, t_maps["test"], t_counts["test"]
        )
        if name == "instance":
            # The same reading without cutting cells larger than the largest annotated one.
            uncut = tuned.model_copy(update={"instance_split_area": None})
            out["methods"][UNCUT_ROW] = _read_cells(probs, uncut, t_maps["test"], t_counts["test"])
            out["fixed_readings"] = _fixed_readings(probs, t_maps["test"], t_counts["test"])
            if save_outputs is not None:
                _save_outputs(
                    save_outputs,
                    {"val": predict_outputs(model, images["val"], tuned), "test": probs},
                    t_maps,
                    t_counts,
                    val,
                )

    if instance_only:
        return
    # A membrane model: semantic regions, and contours with a minimum area tuned on val.
    membranes, mfetch = isbi_manifest(test_ids=TEST, val_ids=val, shift=shift)
    recipe = isbi_recipe("binary", epochs, input_scale, seed)
    t0, c0 = time.monotonic(), cpu_seconds()
    model, done = train(membranes, mfetch, recipe, ["membrane"])
    cap = annotated_area_cap(cell_areas(t_maps["val"]))
    for suffix, tta in (("", False), (", TTA", True)):
        viewed = recipe.model_copy(update={"tta": tta})
        probs = {s: predict_outputs(model, images[s], viewed) for s in ("val", "test")}
        walls = {s: [p[0] >= 0.5 for p in probs[s]] for s in probs}
        cost = {"epochs": done, "wall_s": round(time.monotonic() - t0, 1)}
        cost["cpu_s"] = round(cpu_seconds() - c0, 1)
        out["methods"]["membranes, semantic" + suffix] = {
            **score_slices(
                [enclosed_regions(w) for w in walls["test"]], t_maps["test"], t_counts["test"]
            ),
            **cost,
        }
        best = choose_min_area(walls["val"], t_counts["val"], area_cap=cap)
        out["methods"]["membranes, contours" + suffix] = {
            **score_slices(
                [enclosed_regions(w, best) for w in walls["test"]],
                t_maps["test"],
                t_counts["test"],
            ),
            "min_area": best,
            **cost,
        }


def plot_isbi(result: dict, path: Path) -> None:
    """Predicted against annotated cells per test slice (left) and each method's instance
    F1, named with its mean count error per slice (right), one colour per method in both:
    the rows of a full run are too many for a legend over the scatter."""
    methods = result["methods"]
    colour = {name: plt.cm.tab20(i % 20) for i, name in enumerate(methods)}
    fig, (a, b) = plt.subplots(
        1,
        2,
        figsize=(13, max(4.0, 0.3 * len(methods) + 1.5)),
        gridspec_kw={"width_ratios": [1, 1.5]},
    )
    for name, m in methods.items():
        true = [s["true"] for s in m["slices"]]
        pred = [s["predicted"] for s in m["slices"]]
        a.plot(true, pred, "o", color=colour[name], alpha=0.8)
    cells = [v for m in methods.values() for s in m["slices"] for v in (s["true"], s["predicted"])]
    lo, hi = min(cells) * 0.95, max(cells) * 1.05
    a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a.set_xlabel("annotated cells per test slice")
    a.set_ylabel("predicted cells")
    a.set_title("one colour per method, as on the right", fontsize=8)
    names = list(methods)[::-1]  # the first method at the top
    f1 = [methods[n]["f1_50"] for n in names]
    y = np.arange(len(names))
    b.barh(y, [v or 0 for v in f1], color=[colour[n] for n in names])
    for yi, v in zip(y, f1, strict=True):
        b.text(0.01, yi, "no instances" if v is None else f"F1 {v:.3f}", va="center", fontsize=7)
    b.axvline(TARGET_F1, color="k", ls=":", lw=1)
    b.set_xlim(0, 1)
    b.set_yticks(
        y, [f"{n} (count {methods[n]['mean_relative_error']:.1%} off)" for n in names], fontsize=7
    )
    b.set_xlabel(f"instance F1 at IoU 0.5 (test slices); dotted: target {TARGET_F1}")
    fig.suptitle(
        "ISBI 2012 cells: counts (mean relative error per slice) and instances vs annotated cells",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=["smears", "isbi"], required=True)
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per model")
    ap.add_argument(
        "--no-train", action="store_true", help="isbi: the classical baseline only (no models)"
    )
    ap.add_argument(
        "--val",
        type=int,
        default=3,
        help="isbi: validation slices, the ones just before the test slices 25-29 (default 3)",
    )
    ap.add_argument(
        "--val-spread",
        action="store_true",
        help="isbi: take the --val slices spread evenly over slices 0-24 (3: slices 4, 12, 20)",
    )
    ap.add_argument(
        "--instance-only",
        action="store_true",
        help="isbi: instance mode alone, from one view (no TTA, no membrane model)",
    )
    ap.add_argument(
        "--input-scale", type=float, default=0.5, help="isbi: models' input scale (default 0.5)"
    )
    ap.add_argument(
        "--images",
        type=int,
        nargs=3,
        default=[24, 6, 10],
        metavar=("TRAIN", "VAL", "TEST"),
        help="smears: images per split (default 24 6 10, the demo's)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="smears: seed of the images and the training; isbi: of the training",
    )
    ap.add_argument(
        "--save-outputs",
        type=Path,
        default=None,
        metavar="NPZ",
        help="isbi: write the instance network's validation and test outputs to NPZ "
        "(read by benchmarks/isbi_readings.py)",
    )
    ap.add_argument("--name", default=None, help="stem of the result files (cell_counts_PART)")
    ap.add_argument(
        "--replot", action="store_true", help="draw the PNG again from the result JSON; no run"
    )
    args = ap.parse_args()
    if args.save_outputs is not None:
        # Refused before training, not found missing after it.
        if args.part != "isbi" or args.no_train or args.replot:
            ap.error("--save-outputs: only an isbi run that trains has network outputs to save")
        if args.save_outputs.suffix != ".npz":
            ap.error(f"--save-outputs {args.save_outputs}: the file name must end in .npz")
        if not args.save_outputs.parent.is_dir():
            ap.error(f"--save-outputs {args.save_outputs}: no directory {args.save_outputs.parent}")
    if args.part == "isbi":
        try:  # refused here, before any data is read
            val_slices(args.val, args.val_spread)
        except ValueError as exc:
            ap.error(str(exc))
    if args.val_spread and args.part != "isbi":
        ap.error("--val-spread: only the isbi part has validation slices to spread")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / (args.name or f"cell_counts_{args.part}")
    plot = plot_smears if args.part == "smears" else plot_isbi
    if args.replot:
        plot(json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".png"))
        return
    if args.part == "isbi" and not ISBI.exists():
        raise SystemExit(f"benchmark data not found: {ISBI}")
    t0, c0 = time.monotonic(), cpu_seconds()
    epochs = args.epochs or (40 if args.part == "smears" else 10)
    if args.part == "smears":
        splits = dict(zip(("train", "val", "test"), args.images, strict=True))
        result = smears(epochs, splits, stem.with_name(stem.name + "_overlay.png"), args.seed)
        default = args.images == ap.get_default("images")
        extra = "" if default else " --images " + " ".join(map(str, args.images))
        extra += f" --seed {args.seed}" if args.seed else ""
    else:
        result = isbi(
            epochs,
            not args.no_train,
            args.val,
            args.input_scale,
            args.instance_only,
            args.seed,
            args.save_outputs,
            args.val_spread,
        )
        extra = " --instance-only" if args.instance_only else ""
        extra += f" --seed {args.seed}" if args.seed else ""
        extra += f" --val {args.val}" if args.val != ap.get_default("val") else ""
        extra += " --val-spread" if args.val_spread else ""
        extra += (
            f" --input-scale {args.input_scale}"
            if args.input_scale != ap.get_default("input_scale")
            else ""
        )
    result.update(
        epochs_per_model=epochs,
        wall_s=round(time.monotonic() - t0, 1),
        cpu_s=round(cpu_seconds() - c0, 1),
        command=f"nice -n 10 .venv/bin/python benchmarks/cell_counts.py --part {args.part} "
        f"--epochs {epochs}"
        + (" --no-train" if args.no_train else "")
        + extra
        + (f" --name {args.name}" if args.name else ""),
    )
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, stem.with_suffix(".png"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
