"""Malaria cell-crop classifier (Parasitized / Uninfected), trained from scratch on CPU.

The 4,000 NIH thin-smear crops of `../shared/data/malaria-cells` (train 1,500 + val 500
per class) read as whole-image class tags: `val/` is held out as the test split, never
seen by training or by the choice of epoch; 10 % of `train/` picks the best epoch. The
recipe is the classification default unless flags override it; the budget is a number
of epochs, and the compute it took is reported as CPU seconds of this process
(`resource.getrusage`) beside the wall time, which other work on the machine inflates.
The test split is scored twice from the same weights: with the recipe's test-time views
(the softmax averaged over flips / quarter turns, 8 by default) and with one view.
With several seeds it also reports which test crops every seed gets wrong and the
accuracy of the seeds' averaged softmax (an ensemble at that many times the compute), and
draws the crops every seed gets wrong: errors the seeds share are a property of the
crops (hard or mislabelled), not of one run, and no retraining removes them.
A plain baseline runs beside the network: a stain rule that calls a crop parasitized when
it holds more dark purple pixels (chromatin) than a threshold chosen on the training
crops. Where the rule and the network agree with each other against the annotation, the
annotation is the likelier error.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/malaria_classifier.py [--epochs N]
       [--seeds 0 1] [--encoder NAME] [--image-size PX] [--lr LR]
Writes benchmarks/results/malaria_classifier.json and malaria_classifier_confusion.png
(and malaria_classifier_shared_errors.png with several seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import malaria_manifest  # noqa: E402
from labelloop.training.classification import network  # noqa: E402
from labelloop.training.classification.data import load_samples  # noqa: E402
from labelloop.training.classification.evaluate import predict_sample_probs  # noqa: E402
from labelloop.training.classification.plots import plot_confusion  # noqa: E402
from labelloop.training.classification.recipe import ClassificationRecipe  # noqa: E402
from labelloop.training.common import split_items  # noqa: E402
from labelloop.training.harness import compute_threads  # noqa: E402
from labelloop.training.kind import get_kind  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PUBLISHED = 0.9619  # ResNet-50, ImageNet-pre-trained, GPU, 70/30 split of 27,558 crops
KIND = get_kind("classification")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_seed(
    manifest: dict, fetch: Any, recipe: ClassificationRecipe, test_crops: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """Train one seed and score the test split; also returns its test softmax (N, C)."""
    labels = manifest["labels"]

    def report(event: dict[str, Any]) -> None:
        if event.get("final"):
            print(
                f"  epoch {event['epoch']:3d}  loss {event['loss']:.3f}  "
                f"val acc {event.get('val_acc', float('nan')):.4f}  "
                f"cpu {cpu_seconds() - cpu0:.0f} s",
                flush=True,
            )

    cpu0, wall0 = cpu_seconds(), time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = KIND.train(manifest, recipe, fetch, Path(tmp), on_progress=report)
        model = KIND.load(outcome.weights_path, recipe, labels)
    train_cpu, train_wall = cpu_seconds() - cpu0, time.monotonic() - wall0
    test = KIND.evaluate(model, manifest, fetch, split="test", labels=labels, recipe=recipe)
    # The same weights scored on one view, side by side with the recipe's averaged views.
    one = recipe.with_overrides({"tta_views": 1})
    plain = KIND.evaluate(model, manifest, fetch, split="test", labels=labels, recipe=one)
    probs = predict_sample_probs(model, test_crops, recipe.batch_size, recipe.views)
    return {
        "seed": recipe.seed,
        "train_cpu_s": round(train_cpu, 1),
        "train_wall_s": round(train_wall, 1),
        "epochs": outcome.epochs_completed,
        "best_epoch": outcome.best_epoch,
        "val_accuracy": round(outcome.metrics.get("accuracy") or 0.0, 4),
        "test_views": recipe.views,
        "test_accuracy": round(test["accuracy"], 4),
        "test_accuracy_one_view": round(plain["accuracy"], 4),
        "test_macro_f1": round(test["macro_f1"], 4),
        "test_confusion": test["confusion_matrix"],
        "n_test": test["n_samples"],
    }, probs


def chromatin_pixels(crops: np.ndarray) -> np.ndarray:
    """Per crop, the number of cell pixels that are dark and purple: green at least 40
    below the cell's median green (darker than the cell) and blue above green by more than
    10 (Giemsa-stained chromatin, not a darker red cell). Black (background) is no cell."""
    x = crops.astype(np.int16)
    cell = x.sum(-1) > 60
    green, blue = x[..., 1], x[..., 2]
    counts = np.zeros(len(x), np.int64)
    for i in range(len(x)):
        if not cell[i].any():
            continue
        median = np.median(green[i][cell[i]])
        counts[i] = (cell[i] & (green[i] < median - 40) & (blue[i] > green[i] + 10)).sum()
    return counts


def stain_rule(
    manifest: dict, fetch: Any, labels: list[str], size: int, test_targets: np.ndarray
) -> dict[str, Any]:
    """The plain baseline: threshold the chromatin pixel count, the threshold chosen on
    the training and validation crops (read at `size` px), scored on the test split."""
    recipe = ClassificationRecipe.from_dict({"source": "image", "image_size": size})
    fit_items = split_items(manifest, "train") + split_items(manifest, "val")
    fit = load_samples(fit_items, labels, recipe, fetch)
    test = load_samples(split_items(manifest, "test"), labels, recipe, fetch)
    if not np.array_equal(test.targets, test_targets):
        raise SystemExit("the stain rule read the test crops in another order")
    parasitized = labels.index("Parasitized")
    fit_pixels, test_pixels = chromatin_pixels(fit.crops), chromatin_pixels(test.crops)

    def predict(pixels: np.ndarray, threshold: int) -> np.ndarray:
        return np.where(pixels > threshold, parasitized, 1 - parasitized)

    threshold = max(range(200), key=lambda t: float((predict(fit_pixels, t) == fit.targets).mean()))
    test_pred = predict(test_pixels, threshold)
    return {
        "rule": "parasitized when more than `threshold` chromatin pixels (128 px crop)",
        "threshold": threshold,
        "fit_accuracy": round(float((predict(fit_pixels, threshold) == fit.targets).mean()), 4),
        "test_accuracy": round(float((test_pred == test_targets).mean()), 4),
        "test_predictions": test_pred,
    }


def seed_agreement(
    probs: list[np.ndarray], averaged: np.ndarray, targets: np.ndarray
) -> dict[str, Any]:
    """How much of the error is shared by every seed, and what averaging the seeds gives
    (`averaged`: the class of the seeds' mean softmax per crop)."""
    wrong = [p.argmax(1) != targets for p in probs]
    shared = np.logical_and.reduce(wrong)
    return {
        "errors_per_seed": [int(w.sum()) for w in wrong],
        "errors_shared_by_every_seed": int(shared.sum()),
        "errors_of_any_seed": int(np.logical_or.reduce(wrong).sum()),
        "seed_average_accuracy": round(float((averaged == targets).mean()), 4),
        "shared_error_indices": [int(i) for i in np.flatnonzero(shared)],
    }


def plot_shared_errors(
    crops: np.ndarray,
    targets: np.ndarray,
    probs: np.ndarray,
    indices: list[int],
    labels: list[str],
    path: Path,
) -> None:
    """The crops every seed gets wrong, most confident error first, each titled with its
    annotated class and the seeds' averaged probability of the class they chose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(indices, key=lambda i: -float(probs[i].max()))
    cols = 10
    rows = max(1, -(-len(order) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        ax.imshow(crops[i])
        said = labels[int(probs[i].argmax())]
        ax.set_title(f"{labels[targets[i]][:5]}→{said[:5]}\n{probs[i].max():.2f}", fontsize=7)
    fig.suptitle(
        f"{len(order)} test crops every seed gets wrong: annotated → predicted, "
        "averaged probability",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="recipe default if unset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--encoder", default=None, help="timm model name")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--recipe", default=None, help="extra recipe fields as JSON")
    ap.add_argument(
        "--timm-head",
        action="store_true",
        help="keep timm's own head initialisation (what the zero head replaced), to compare",
    )
    ap.add_argument("--name", default="malaria_classifier", help="stem of the result files")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for JSON and PNG")
    args = ap.parse_args()

    if args.timm_head:
        network.zero_head = lambda model: None
    fields: dict[str, Any] = {"source": "image"}
    for key in ("epochs", "encoder", "image_size", "batch_size", "lr"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    fields.update(json.loads(args.recipe or "{}"))
    base = ClassificationRecipe.from_dict(fields)
    cpu0 = cpu_seconds()
    manifest, fetch = malaria_manifest()
    load_cpu = cpu_seconds() - cpu0
    counts = {s: len(split_items(manifest, s)) for s in ("train", "val", "test")}
    print(f"crops {counts}; recipe {base.model_dump(mode='json')}", flush=True)
    load_start = os.getloadavg()
    test = load_samples(split_items(manifest, "test"), manifest["labels"], base, fetch)
    runs, probs = [], []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        run, seed_probs = run_seed(manifest, fetch, base.with_overrides({"seed": seed}), test.crops)
        runs.append(run)
        probs.append(seed_probs)
        r = runs[-1]
        print(
            f"seed {seed}: test accuracy {r['test_accuracy']:.4f} with {r['test_views']} views, "
            f"{r['test_accuracy_one_view']:.4f} with one (val {r['val_accuracy']:.4f}), "
            f"{r['epochs']} epochs, {r['train_cpu_s']:.0f} CPU s, {r['train_wall_s']:.0f} s wall",
            flush=True,
        )
    accs = [r["test_accuracy"] for r in runs]
    summary = {
        "dataset": "NIH malaria thin-smear crops (../shared/data/malaria-cells); "
        "test = its val/ folder, val = 10 % of train/ by file-name hash",
        "crops": counts,
        "recipe": base.model_dump(mode="json"),
        "threads": compute_threads(),
        "head_init": "timm" if args.timm_head else "zero",
        "load_cpu_s": round(load_cpu, 1),
        "runs": runs,
        "test_accuracy_mean": round(statistics.mean(accs), 4),
        "test_accuracy_sd": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
        "test_accuracy_one_view_mean": round(
            statistics.mean(r["test_accuracy_one_view"] for r in runs), 4
        ),
        "train_cpu_s_max": max(r["train_cpu_s"] for r in runs),
        "published_anchor": {"accuracy": PUBLISHED, "model": "ResNet-50 ImageNet-pre-trained"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1m_start": round(load_start[0], 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        },
    }
    out_dir = args.results.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{args.name}_confusion.png"
    plot_confusion(
        runs[0]["test_confusion"],
        manifest["labels"],
        png,
        title=f"malaria, {base.image_size} px: accuracy {runs[0]['test_accuracy']:.3f}",
    )
    summary["confusion_png"] = png.name
    rule = stain_rule(manifest, fetch, manifest["labels"], 128, test.targets)
    rule_pred = rule.pop("test_predictions")
    mean_probs = np.mean(probs, axis=0)
    averaged = mean_probs.argmax(1)
    agree = averaged == rule_pred
    rule["network_agrees_on"] = int(agree.sum())
    rule["accuracy_where_both_agree"] = round(
        float((averaged[agree] == test.targets[agree]).mean()), 4
    )
    summary["stain_rule_baseline"] = rule
    print(
        f"stain rule (threshold {rule['threshold']} px): "
        f"test accuracy {rule['test_accuracy']:.4f}; "
        f"it and the network agree on {rule['network_agrees_on']} crops, "
        f"{rule['accuracy_where_both_agree']:.4f} of them as annotated",
        flush=True,
    )
    if len(probs) > 1:
        agreement = seed_agreement(probs, averaged, test.targets)
        shared = agreement["shared_error_indices"]
        agreement["shared_errors_the_rule_also_calls_so"] = int(
            (rule_pred[shared] != test.targets[shared]).sum()
        )
        shared_png = out_dir / f"{args.name}_shared_errors.png"
        plot_shared_errors(
            test.crops,
            test.targets,
            mean_probs,
            agreement["shared_error_indices"],
            manifest["labels"],
            shared_png,
        )
        summary["seed_agreement"] = agreement | {"png": shared_png.name}
        print(
            f"errors per seed {agreement['errors_per_seed']}, shared by every seed "
            f"{agreement['errors_shared_by_every_seed']} (the stain rule also contradicts the "
            f"annotation on {agreement['shared_errors_the_rule_also_calls_so']}); "
            "the seeds' averaged softmax: "
            f"accuracy {agreement['seed_average_accuracy']:.4f}",
            flush=True,
        )
    (out_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    sd = f" ± {summary['test_accuracy_sd']:.4f}" if summary["test_accuracy_sd"] else ""
    print(
        f"test accuracy {summary['test_accuracy_mean']:.4f}{sd} over seeds {args.seeds} "
        f"(published anchor {PUBLISHED}); wrote {png.name} and {args.name}.json"
    )


if __name__ == "__main__":
    main()
