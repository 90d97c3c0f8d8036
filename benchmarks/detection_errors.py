"""Where a detector's AP@0.5 is lost: its false positives sorted by what lies under them.

Each class's ranked predictions on one split (the recipe's views, conf 0.001) are
matched to the annotated boxes as mAP@0.5 matches them (score order, IoU >= 0.5, same
class: `calibrate.match_boxes`). Every unmatched box is then put in one class of error by
its largest IoU with the annotation:

- `duplicate`: >= 0.5 with a box of its class that another prediction already took;
- `localisation`: 0.1-0.5 with a box of its class (the right cell, drawn loosely);
- `confusion`: < 0.1 with its class but >= 0.3 with a box of another class;
- `background`: nothing annotated under it: a missed annotation or a real mistake.

For each class of error the AP@0.5 with those boxes taken out of the ranking (the same
`detection_metrics` as every detection figure) is what a perfect fix of that error alone
would give. On BCCD the red cells' `background` share says how much of their AP the
unboxed red cells cost, which no detector change can recover on this test set.

Usage: .venv/bin/python benchmarks/detection_errors.py --bccd NAME [--bccd ...]
       [--split test] [--name detection_errors]
Reads the models `bccd_detection.py --only labelloop --name NAME` left in .cache/NAME;
writes benchmarks/results/<name>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import bccd_manifest  # noqa: E402
from benchmarks.detection_tta import bccd_model  # noqa: E402
from labelloop.training.common import split_items  # noqa: E402
from labelloop.training.detection.calibrate import MATCH_IOU, match_boxes, overlaps  # noqa: E402
from labelloop.training.detection.data import load_sample  # noqa: E402
from labelloop.training.detection.evaluate import detection_metrics  # noqa: E402
from labelloop.training.detection.predict import Detections, detect_passes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ERRORS = ("duplicate", "localisation", "confusion", "background")
HIGH_SCORE = 0.25  # the recipe's default score threshold: errors a user would see


def error_kinds(det: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
    """'tp' or the error class of each box of one image's detections."""
    gt_labels = np.asarray(gt_labels)
    iou = overlaps(det, gt_boxes)
    same = det.labels[:, None] == gt_labels[None, :]
    own = np.where(same, iou, 0.0).max(1, initial=0.0)
    other = np.where(same, 0.0, iou).max(1, initial=0.0)
    errors = np.select(
        [own >= MATCH_IOU, own >= 0.1, other >= 0.3], list(ERRORS[:3]), default=ERRORS[3]
    )
    return np.where(match_boxes(det, gt_boxes, gt_labels, iou).astype(bool), "tp", errors)


def errors_of(name: str, split: str) -> dict[str, Any]:
    """Per class: AP@0.5, AP@0.5 with each error class removed, and the error counts."""
    manifest, fetch = bccd_manifest("detection")
    labels = manifest["labels"]
    model, recipe, run = bccd_model(name, labels)
    samples = [load_sample(it, labels, fetch) for it in split_items(manifest, split)]
    (ranked,) = detect_passes(
        model, [s[0] for s in samples], recipe, [(recipe.eval_score_threshold, True)]
    )
    truths = [(s[1], s[2]) for s in samples]
    kinds = [error_kinds(det, *truth) for det, truth in zip(ranked, truths, strict=True)]

    def ap50(dets: list[Detections]) -> dict[str, float]:
        metrics = detection_metrics(dets, truths, labels, score_threshold=HIGH_SCORE)
        return {lb: round(v["ap50"], 4) for lb, v in metrics["per_class"].items()}

    as_is = ap50(ranked)
    without = {
        e: ap50([d.subset(k != e) for d, k in zip(ranked, kinds, strict=True)]) for e in ERRORS
    }
    kd = np.concatenate(kinds)
    sc = np.concatenate([d.scores for d in ranked])
    cls = np.concatenate([d.labels for d in ranked])
    per_class = {}
    for c, label in enumerate(labels):
        high = (cls == c) & (sc >= HIGH_SCORE)
        per_class[label] = {
            "n_true": int(sum((np.asarray(t[1]) == c).sum() for t in truths)),
            "ap50": as_is[label],
            "ap50_without": {e: without[e][label] for e in ERRORS},
            f"errors_scoring_{HIGH_SCORE}": {e: int((high & (kd == e)).sum()) for e in ERRORS},
            f"true_positives_scoring_{HIGH_SCORE}": int((high & (kd == "tp")).sum()),
        }
        print(
            f"  {label}: AP50 {as_is[label]:.4f}; without "
            + ", ".join(f"{e} {v:.4f}" for e, v in per_class[label]["ap50_without"].items()),
            flush=True,
        )
    return {"run": name, "epochs": run["epochs"], "split": split, "per_class": per_class}


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    labels = list(runs[0]["per_class"])
    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels), 4.2), squeeze=False)
    bars = ("ap50", *ERRORS)
    width = 0.8 / len(runs)
    for ax, label in zip(axes[0], labels, strict=True):
        for i, run in enumerate(runs):
            pc = run["per_class"][label]
            values = [pc["ap50"], *(pc["ap50_without"][e] for e in ERRORS)]
            xs = np.arange(len(bars)) + (i - (len(runs) - 1) / 2) * width
            ax.bar(xs, values, width, label=run["run"])
            for x, v in zip(xs, values, strict=True):
                ax.text(x, v + 0.003, f"{v:.3f}", ha="center", fontsize=6, rotation=90)
        ax.set_xticks(range(len(bars)), ["as is", *(f"no\n{e}" for e in ERRORS)], fontsize=8)
        low = min(r["per_class"][label]["ap50"] for r in runs)
        ax.set_ylim(max(0.0, low - 0.05), 1.02)
        ax.set_title(f"{label}: {summary['split']} AP@0.5, each error class removed", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("AP@0.5")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=min(len(runs), 6))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bccd", action="append", required=True, metavar="NAME")
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--name", default="detection_errors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = []
    for name in args.bccd:
        print(f"BCCD {name}, {args.split}", flush=True)
        runs.append(errors_of(name, args.split))
    png = RESULTS / f"{args.name}.png"
    summary = {
        "split": args.split,
        "matching": "as mAP@0.5 matches: score order, same class, IoU >= 0.5",
        "errors": {
            "duplicate": "IoU >= 0.5 with an already matched box of its class",
            "localisation": "IoU 0.1-0.5 with a box of its class",
            "confusion": "IoU < 0.1 with its class, >= 0.3 with a box of another class",
            "background": "nothing annotated under it",
        },
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
        "png": png.name,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, png)
    print(f"wrote {png.name} and {args.name}.json")


if __name__ == "__main__":
    main()
