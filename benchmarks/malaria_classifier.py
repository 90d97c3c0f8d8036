"""Malaria cell-crop classifier (Parasitized / Uninfected), trained from scratch on CPU.

The 4,000 NIH thin-smear crops of `../shared/data/malaria-cells` (train 1,500 + val 500
per class) read as whole-image class tags: `val/` is held out as the test split, never
seen by training or by the choice of epoch; 10 % of `train/` picks the best epoch. The
recipe is the classification default unless flags override it; the budget is a number
of epochs, and the compute it took is reported as CPU seconds of this process
(`resource.getrusage`) beside the wall time, which other work on the machine inflates.
The test split is scored twice from the same weights: with the recipe's test-time views
(the softmax averaged over flips / quarter turns, 8 by default) and with one view.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/malaria_classifier.py [--epochs N]
       [--seeds 0 1] [--encoder NAME] [--image-size PX] [--lr LR]
Writes benchmarks/results/malaria_classifier.json and malaria_classifier_confusion.png.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import malaria_manifest  # noqa: E402
from labelloop.training.classification import network  # noqa: E402
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


def run_seed(manifest: dict, fetch: Any, recipe: ClassificationRecipe) -> dict[str, Any]:
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
    }


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
    runs = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        runs.append(run_seed(manifest, fetch, base.with_overrides({"seed": seed})))
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
    (out_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    sd = f" ± {summary['test_accuracy_sd']:.4f}" if summary["test_accuracy_sd"] else ""
    print(
        f"test accuracy {summary['test_accuracy_mean']:.4f}{sd} over seeds {args.seeds} "
        f"(published anchor {PUBLISHED}); wrote {png.name} and {args.name}.json"
    )


if __name__ == "__main__":
    main()
