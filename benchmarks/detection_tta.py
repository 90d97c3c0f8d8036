"""Test-time views for the detector: mAP@0.5 and prediction time at 1, 2, 4 and 8 views.

The detector's `tta_views` puts every grid point's class scores and box from each
flipped / turned view back where the point lies unturned and averages them before NMS
(`training.detection.predict.point_predictions`). This measures what that buys on
models trained with the recipe defaults, scored by the same code as every detection
figure (`evaluate_detection`: COCO mAP over the validation and test splits):

- BCCD: the models `bccd_detection.py --only labelloop` left in its work folders
  (`--bccd NAME`, one per seed), scored again without training;
- synthetic smears (`--synthetic-minutes M`): a detector trained here from scratch on
  generated fields (every cell boxed; 96 train, 32 validation, 32 test at 256 px), a
  second dataset so that a default is not chosen on BCCD alone. `--set field=value`
  trains it with a recipe change (as `bccd_detection.py --set` does), so that a change
  tried on BCCD is tried here too; `bccd_pairs.py` compares such runs pair by pair.

Views are chosen on validation, and checked on test. Prediction time is the wall time of
one split's evaluation divided by its images, on one thread. Counts: test count MAE per
class at the count thresholds chosen on validation at the same views, as a training run
chooses them (`kind.calibrate`).

`--nms 0.5,0.6,0.7` scores every view count at each of these NMS IoUs too (the plot then
draws mAP against the NMS IoU, one line per model and view count).

Usage: .venv/bin/python benchmarks/detection_tta.py --bccd bccd_detection [--bccd ...]
       [--synthetic-minutes 8 [--seed S] [--set weight_decay=0.05]] [--views 1,2,4,8]
       [--nms 0.5,0.6,0.7,0.8] [--name STEM]
Writes benchmarks/results/STEM.json and STEM.png (STEM: detection_tta unless --name).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import bccd_manifest, synthetic_manifest  # noqa: E402
from benchmarks.overrides import add_set_argument, parse_overrides  # noqa: E402
from labelloop.training.common import split_items  # noqa: E402
from labelloop.training.kind import get_kind  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"
SYNTHETIC_SPLITS = {"train": 96, "val": 32, "test": 32}
BCCD_TARGET = 0.92  # test mAP@0.5 from scratch in 30 CPU-minutes


def score_views(
    model: Any,
    recipe: Any,
    manifest: dict,
    fetch: Any,
    views: list[int],
    nms: list[float | None] = (None,),
) -> list[dict[str, Any]]:
    """mAP of `model` on val and test at each number of views (and each NMS IoU; None: the
    recipe's), with seconds per image, and test count MAE per class at count thresholds
    chosen on val at those settings (what a training run stores)."""
    kind = get_kind("detection")
    labels = manifest["labels"]
    rows = []
    for n, iou in itertools.product(views, nms):
        iou = recipe.nms_iou if iou is None else iou
        tta = recipe.model_copy(update={"tta_views": n, "nms_iou": iou, "count_thresholds": {}})
        row: dict[str, Any] = {"tta_views": n, "nms_iou": iou}
        for split in ("val", "test"):
            if split == "test":  # mAP does not depend on the count thresholds
                tta = kind.calibrate(model, manifest, fetch, labels=labels, recipe=tta)
            t0 = time.monotonic()
            m = kind.evaluate(model, manifest, fetch, split=split, labels=labels, recipe=tta)
            row[split] = {
                "map50": round(m["map50"], 6),
                "map": round(m["map"], 6),
                "ap50": {c: v["ap50"] for c, v in m["per_class"].items()},
                "s_per_image": round(
                    (time.monotonic() - t0) / len(split_items(manifest, split)), 4
                ),
            }
        row["test"]["count_thresholds"] = tta.count_thresholds
        row["test"]["count_mae"] = {c: v["count_mae"] for c, v in m["per_class"].items()}
        print(
            f"  {n} views, NMS IoU {iou:g}: val {row['val']['map50']:.4f}  "
            f"test {row['test']['map50']:.4f}  "
            f"({row['test']['s_per_image'] * 1000:.0f} ms/image)  test count MAE "
            + " / ".join(f"{v:.2f}" for v in row["test"]["count_mae"].values()),
            flush=True,
        )
        rows.append(row)
    return rows


def bccd_model(name: str, labels: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """The detector a `bccd_detection.py` run left in `.cache/NAME`, its recipe, its run."""
    kind = get_kind("detection")
    work = CACHE / name
    if not (work / "labelloop.pt").exists():
        raise SystemExit(
            f"{work / 'labelloop.pt'} not found: run "
            f"`benchmarks/bccd_detection.py --only labelloop --name {name}` first"
        )
    run = json.loads((work / "labelloop.json").read_text())
    recipe = kind.recipe_cls.from_dict(run["recipe"])  # views are set per row when scored
    model = kind.load((work / "labelloop.pt").read_bytes(), recipe, labels)
    return model, recipe, run


def train_synthetic(
    minutes: float, seed: int, overrides: dict[str, Any]
) -> tuple[Any, Any, dict, Any, dict[str, Any]]:
    kind = get_kind("detection")
    manifest, fetch = synthetic_manifest(SYNTHETIC_SPLITS, size=256, seed=seed, task="detection")
    recipe = kind.recipe_cls.from_dict(
        {
            "image_size": 256,
            "epochs": 1000,
            "max_time_s": minutes * 60,
            "seed": seed,
            **overrides,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        outcome = kind.train(manifest, recipe, fetch, Path(tmp))
        model = kind.load(outcome.weights_path.read_bytes(), recipe, manifest["labels"])
    run = {
        "epochs": outcome.epochs_completed,
        "train_s": round(outcome.duration_s, 1),
        "recipe": recipe.model_dump(mode="json"),
        "recipe_views": recipe.views,  # the test-time views it predicts with
        "overrides": overrides,
    }
    return model, recipe, manifest, fetch, run


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    # x: the NMS IoU when several were swept (one line per model and view count), else the
    # view count (one line per model; rows from before the sweep carry no nms_iou).
    rows_all = [r for e in summary["models"].values() for r in e["views"]]
    sweep = len({r.get("nms_iou") for r in rows_all}) > 1
    x_key, line_key = ("nms_iou", "tta_views") if sweep else ("tta_views", "nms_iou")
    lines = [
        (
            f"{name}, {n} view(s)" if sweep else name,
            [r for r in entry["views"] if r.get(line_key) == n],
        )
        for name, entry in summary["models"].items()
        for n in sorted({r.get(line_key) for r in entry["views"]}, key=str)
    ]
    for i, (name, rows) in enumerate(lines):
        x = [r[x_key] for r in rows]
        for split, style in (("test", "-"), ("val", ":")):
            ax.plot(
                x,
                [r[split]["map50"] for r in rows],
                style,
                marker="o",
                color=f"C{i}",
                label=f"{name} {split}",
            )
        bx.plot(x, [r["test"]["s_per_image"] * 1000 for r in rows], marker="o", color=f"C{i}")
    ax.axhline(BCCD_TARGET, color="grey", ls="--", lw=1, label=f"BCCD target {BCCD_TARGET}")
    what = "NMS IoU" if sweep else "views averaged (1: the image as it is)"
    ticks = sorted({r[x_key] for r in rows_all})
    ax.set_xlabel(what)
    ax.set_ylabel("mAP@0.5")
    ax.set_xticks(ticks)
    ax.set_title(f"Detector mAP@0.5 against {'NMS IoU' if sweep else 'test-time views'}")
    ax.legend(fontsize=7, loc="best", ncol=2)
    bx.set_xlabel(what)
    bx.set_ylabel("evaluation time per image (ms, one thread)")
    bx.set_xticks(ticks)
    bx.set_title("What prediction costs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--bccd", action="append", default=[], metavar="NAME", help="bccd_detection.py run name"
    )
    ap.add_argument("--synthetic-minutes", type=float, default=0.0, help="0: no synthetic model")
    ap.add_argument("--seed", type=int, default=0, help="synthetic data and training seed")
    add_set_argument(ap, " for the synthetic detector")
    ap.add_argument("--views", default="1,2,4,8")
    ap.add_argument(
        "--nms", default="", help="NMS IoU values to score at each view count (default: recipe's)"
    )
    ap.add_argument("--name", default="detection_tta")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON")
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    if overrides and not args.synthetic_minutes:
        ap.error("--set changes how the synthetic detector is trained: give --synthetic-minutes")
    if args.replot:
        path = RESULTS / f"{args.name}.json"
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
        return
    torch.set_num_threads(1)
    views = [int(v) for v in args.views.split(",")]
    nms = [float(v) for v in args.nms.split(",") if v] or [None]
    models: dict[str, Any] = {}
    if args.bccd:
        manifest, fetch = bccd_manifest("detection")
        for name in args.bccd:
            print(f"BCCD {name}", flush=True)
            model, recipe, run = bccd_model(name, manifest["labels"])
            models[f"BCCD seed {run['recipe']['seed']}"] = {
                "run": name,
                "epochs": run["epochs"],
                "views": score_views(model, recipe, manifest, fetch, views, nms),
            }
    if args.synthetic_minutes:
        print(f"synthetic smears: training {args.synthetic_minutes:g} min", flush=True)
        model, recipe, manifest, fetch, run = train_synthetic(
            args.synthetic_minutes, args.seed, overrides
        )
        changed = ", ".join(args.set)
        models[f"synthetic seed {args.seed}" + (f", {changed}" if changed else "")] = {
            **run,
            "images": SYNTHETIC_SPLITS,
            "views": score_views(model, recipe, manifest, fetch, views, nms),
        }
    if not models:
        raise SystemExit("nothing to measure: give --bccd NAME and/or --synthetic-minutes M")
    summary = {
        "view_counts": views,
        "metric": "evaluate_detection mAP@0.5 (COCO, conf 0.001) on each split",
        "models": models,
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{args.name}.png"
    summary["png"] = png.name
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, png)
    print(f"wrote {png.name} and {args.name}.json")


if __name__ == "__main__":
    main()
