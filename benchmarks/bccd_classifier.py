"""BCCD cell-crop classifier (RBC / WBC / platelets), trained from scratch on CPU.

Every BCCD box becomes one crop (with context margin, resized to the recipe's input
size); crops keep the split of their source image (BCCD's own train/val/test image
lists), so no cell of a test image is ever seen in training. Scored on the test crops:
accuracy, macro-F1, per-class F1, confusion matrix, beside a majority-class baseline
(every cell called RBC), which the class imbalance makes look good on accuracy alone.

Usage: .venv/bin/python benchmarks/bccd_classifier.py [--minutes 6] [--encoder lcnet_050]
Writes benchmarks/results/bccd_classifier.json and bccd_classifier_confusion.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import bccd_manifest  # noqa: E402
from labelloop.training.classification.evaluate import (  # noqa: E402
    classification_metrics,
    evaluate_classification,
)
from labelloop.training.classification.plots import plot_confusion  # noqa: E402
from labelloop.training.classification.predict import load_classifier  # noqa: E402
from labelloop.training.classification.recipe import ClassificationRecipe  # noqa: E402
from labelloop.training.common import split_items  # noqa: E402
from labelloop.training.kind import get_kind  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def box_counts(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Crops per split and label (one per box), from the manifest alone."""
    out: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        c = Counter(s["label"] for it in split_items(manifest, split) for s in it["shapes"])
        out[split] = {name: c.get(name, 0) for name in manifest["labels"]}
        out[split]["images"] = len(split_items(manifest, split))
    return out


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget (wall clock)")
    ap.add_argument("--epochs", type=int, default=1000, help="upper bound; the budget decides")
    ap.add_argument("--encoder", default=None, help="timm model name (recipe default if unset)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--balance", choices=["none", "loss", "sampler"], default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="bccd_classifier", help="stem of the result files")
    ap.add_argument("--workdir", type=Path, default=None, help="keep checkpoints here")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for JSON and PNG")
    args = ap.parse_args()

    fields: dict[str, Any] = {"source": "crops", "epochs": args.epochs, "seed": args.seed}
    fields["max_time_s"] = args.minutes * 60
    for key in ("encoder", "image_size", "balance", "lr"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    recipe = ClassificationRecipe.from_dict(fields)
    manifest, fetch = bccd_manifest("classification")
    labels = manifest["labels"]
    load_start = os.getloadavg()

    def report(event: dict[str, Any]) -> None:
        if event.get("final"):
            print(
                f"epoch {event['epoch']:3d}  loss {event['loss']:.3f}  "
                f"val macro-F1 {event.get('val_macro_f1', float('nan')):.3f}  "
                f"val acc {event.get('val_acc', float('nan')):.3f}",
                flush=True,
            )

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        outcome = get_kind("classification").train(
            manifest, recipe, fetch, workdir, on_progress=report
        )
        model = load_classifier(outcome.weights_path, recipe, labels)
    wall = time.monotonic() - started
    eval_start = time.monotonic()
    test = evaluate_classification(
        model, manifest, fetch, split="test", labels=labels, recipe=recipe
    )
    eval_s = time.monotonic() - eval_start

    # Majority baseline: the most common class of the training crops, for every test crop.
    counts = box_counts(manifest)
    majority = max(labels, key=lambda name: counts["train"][name])
    truth = [labels.index(s["label"]) for it in split_items(manifest, "test") for s in it["shapes"]]
    baseline = classification_metrics(truth, [labels.index(majority)] * len(truth), labels)

    out_dir = args.results.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{args.name}_confusion.png"
    plot_confusion(
        test["confusion_matrix"],
        labels,
        png,
        title=f"BCCD test crops ({recipe.encoder}, {recipe.image_size} px): "
        f"macro-F1 {test['macro_f1']:.3f}",
    )
    summary = {
        "dataset": "BCCD (VOC boxes), BCCD's own image-level train/val/test split",
        "crops": counts,
        "recipe": recipe.model_dump(mode="json"),
        "training": {
            "budget_s": recipe.max_time_s,
            "wall_s": round(wall, 1),
            "train_loop_s": round(outcome.duration_s, 1),
            "epochs": outcome.epochs_completed,
            "best_epoch": outcome.best_epoch,
            "stopped_by_time": outcome.stopped_by_time,
            "val": _round({k: outcome.metrics.get(k) for k in ("accuracy", "macro_f1")}),
        },
        "test": _round(test),
        "test_eval_s": round(eval_s, 1),
        "majority_baseline": _round({"predicts": majority, **baseline}),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1m_start": round(load_start[0], 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        },
        "confusion_png": png.name,
    }
    (out_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"test crops {test['n_samples']}: accuracy {test['accuracy']:.3f}  "
        f"macro-F1 {test['macro_f1']:.3f}  "
        + "  ".join(f"F1 {n} {c['f1']:.3f}" for n, c in test["per_class"].items())
    )
    print(
        f"majority baseline ({majority}): accuracy {baseline['accuracy']:.3f}  "
        f"macro-F1 {baseline['macro_f1']:.3f}"
    )
    print(
        f"{outcome.epochs_completed} epochs in {wall:.0f} s; wrote {png.name} and {args.name}.json"
    )


if __name__ == "__main__":
    main()
