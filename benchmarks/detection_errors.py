"""Where a detector's AP@0.5 is lost: its false positives sorted by what lies under them.

Each class's ranked predictions on one split (the recipe's views, conf 0.001, each
image's 100 best, as COCO mAP ranks them) are matched greedily by score to the annotated
boxes at IoU 0.5. Every unmatched box is then put in one class of error by its largest
IoU with the annotation:

- `duplicate`: >= 0.5 with a box of its class that another prediction already took;
- `localisation`: 0.1-0.5 with a box of its class (the right cell, drawn loosely);
- `confusion`: < 0.1 with its class but >= 0.3 with a box of another class;
- `background`: nothing annotated under it: a missed annotation or a real mistake.

For each class of error the AP@0.5 with those boxes taken out of the ranking is what a
perfect fix of that error alone would give (COCO's 101-point interpolation; the column
`ap50` is the same computation with nothing taken out and matches `evaluate_detection`).
On BCCD the red cells' `background` share says how much of their AP the unboxed red
cells cost, which no detector change can recover on this test set.

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
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import bccd_manifest  # noqa: E402
from benchmarks.detection_tta import bccd_model  # noqa: E402
from labelloop.training.common import split_items  # noqa: E402
from labelloop.training.detection.data import load_sample  # noqa: E402
from labelloop.training.detection.predict import detect_passes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ERRORS = ("duplicate", "localisation", "confusion", "background")
COCO_MAX_DETS = 100
HIGH_SCORE = 0.25  # the recipe's default score threshold: errors a user would see


def ap101(tp: np.ndarray, scores: np.ndarray, n_true: int) -> float:
    """COCO-style AP: precision made monotone, read at 101 recall points."""
    if not n_true:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = tp[order]
    recall = np.cumsum(hits) / n_true
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in at]))


def classify(
    boxes: torch.Tensor, scores: np.ndarray, truth: torch.Tensor, other: torch.Tensor
) -> list[str]:
    """'tp' or the error class of each prediction of one class in one image."""
    own = box_iou(boxes, truth).numpy() if len(truth) else np.zeros((len(boxes), 0))
    rest = box_iou(boxes, other).numpy() if len(other) else np.zeros((len(boxes), 0))
    taken = np.zeros(len(truth), bool)
    out = []
    for k in np.argsort(-scores, kind="stable"):
        free = np.where(taken, -1.0, own[k]) if len(truth) else own[k]
        if len(truth) and free.max() >= 0.5:
            taken[int(free.argmax())] = True
            out.append((k, "tp"))
            continue
        best = own[k].max() if len(truth) else 0.0
        if best >= 0.5:
            kind = "duplicate"
        elif best >= 0.1:
            kind = "localisation"
        elif len(other) and rest[k].max() >= 0.3:
            kind = "confusion"
        else:
            kind = "background"
        out.append((k, kind))
    return [kind for _, kind in sorted(out)]


def errors_of(name: str, split: str) -> dict[str, Any]:
    """Per class: AP@0.5, AP@0.5 with each error class removed, and the error counts."""
    manifest, fetch = bccd_manifest("detection")
    labels = manifest["labels"]
    model, recipe, run = bccd_model(name, labels)
    samples = [load_sample(it, labels, fetch) for it in split_items(manifest, split)]
    (ranked,) = detect_passes(
        model, [s[0] for s in samples], recipe, [(recipe.eval_score_threshold, True)]
    )
    per_class = {}
    for c, label in enumerate(labels):
        scores, kinds, n_true = [], [], 0
        for det, (_, gt_boxes, gt_labels) in zip(ranked, samples, strict=True):
            truth = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
            mine = np.asarray(gt_labels) == c
            n_true += int(mine.sum())
            keep = np.asarray(det.labels) == c
            s = np.asarray(det.scores)[keep]
            top = np.argsort(-s, kind="stable")[:COCO_MAX_DETS]
            b = torch.as_tensor(np.asarray(det.boxes)[keep][top], dtype=torch.float32)
            kinds += classify(b.reshape(-1, 4), s[top], truth[mine], truth[~mine])
            scores.append(s[top])
        sc, kd = np.concatenate(scores), np.asarray(kinds)
        tp = (kd == "tp").astype(float)
        per_class[label] = {
            "n_true": n_true,
            "ap50": round(ap101(tp, sc, n_true), 4),
            "ap50_without": {e: round(ap101(tp[kd != e], sc[kd != e], n_true), 4) for e in ERRORS},
            f"errors_scoring_{HIGH_SCORE}": {
                e: int(((kd == e) & (sc >= HIGH_SCORE)).sum()) for e in ERRORS
            },
            f"true_positives_scoring_{HIGH_SCORE}": int(((kd == "tp") & (sc >= HIGH_SCORE)).sum()),
        }
        print(
            f"  {label}: AP50 {per_class[label]['ap50']:.4f}; without "
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
        "matching": "greedy by score at IoU 0.5, each image's 100 best boxes per class",
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
